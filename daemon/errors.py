"""The project's exceptions.

Each carries structured fields and builds its own message, so callers branch on the
type and the CLI (the one place that maps errors to exit codes) prints ``str(exc)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class VigilError(Exception):
    """Base of every error vigil reports to an operator."""

    #: Process exit code the CLI uses for this kind of error.
    exit_code: int = 1


class KeyFileError(VigilError):
    """The key file is missing, malformed, or readable by group or others."""

    exit_code = 3

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"key file {path}: {problem}")


class WrongKeyError(VigilError):
    """A journal cannot be decrypted with any key in the keyring."""

    exit_code = 3

    def __init__(self, journal: Path | str, key_id: str, keyring: str) -> None:
        self.journal = journal
        self.key_id = key_id
        self.keyring = keyring
        super().__init__(
            f"journal {journal}: written with key id {key_id!r}, which the keyring "
            f"{keyring} cannot decrypt (wrong key file?); nothing was changed"
        )


class JournalCorruptError(VigilError):
    """A record before the tail of a journal is damaged: never skipped silently."""

    exit_code = 4

    def __init__(
        self, path: Path | str, line: int, seq: int | None, problem: str, *, last: bool = False
    ) -> None:
        self.path = path
        self.line = line
        self.seq = seq
        self.problem = problem
        self.last = last
        where = f"line {line}" + (f" (sequence {seq})" if seq is not None else "")
        why = (
            "it is a complete line (with its newline), which a crash mid-write cannot leave"
            if last
            else "records after it are intact"
        )
        super().__init__(
            f"journal {path}: {where}: {problem}; {why}, so this "
            "is corruption or tampering, not a torn write. Nothing was changed; restore "
            "the file from a backup or move it aside to start that conversation afresh"
        )


class JournalVersionError(VigilError):
    """A journal record uses a format version this build does not understand."""

    exit_code = 4

    def __init__(self, path: Path, line: int, version: object, supported: int) -> None:
        self.path = path
        self.line = line
        self.version = version
        self.supported = supported
        super().__init__(
            f"journal {path}: line {line}: written by a newer vigil (format {version!r}); "
            f"this vigil reads formats up to {supported}. Nothing was changed; upgrade vigil "
            "to read it"
        )


class JournalWriteError(VigilError):
    """An append could not be written (for example the disk is full).

    The journal was restored to its last complete record; the event was not shown.
    """

    exit_code = 5

    def __init__(self, path: Path | str, errno_name: str, detail: str) -> None:
        self.path = path
        self.errno_name = errno_name
        self.detail = detail
        super().__init__(f"journal {path}: write failed ({errno_name}): {detail}")


class JournalFatalError(VigilError):
    """fsync failed, or the file could not be restored after a failed write.

    The process must exit: after a failed fsync the kernel may have dropped the dirty
    pages, so retrying on the same descriptor could acknowledge lost data.
    """

    exit_code = 6

    def __init__(self, path: Path | str, errno_name: str, detail: str) -> None:
        self.path = path
        self.errno_name = errno_name
        self.detail = detail
        super().__init__(
            f"journal {path}: {detail} ({errno_name}); exiting without acknowledging "
            "the record. Every record acknowledged before this is on disk"
        )


class StateLockedError(VigilError):
    """Another vigil process already runs on this state directory."""

    exit_code = 7

    def __init__(self, lock_path: Path, holder: str) -> None:
        self.lock_path = lock_path
        self.holder = holder
        super().__init__(
            f"another vigil is already running on this state directory "
            f"(lock {lock_path} held{(' by ' + holder) if holder else ''})"
        )


class ForkRefusedError(VigilError):
    """``vigil fork`` cannot branch that conversation there; nothing was written."""

    exit_code = 11

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"fork refused: {problem}; nothing was written")


class DirectoryError(VigilError):
    """A directory vigil keeps its files in (``key`` of the config) cannot be created
    or written: ``path`` is the one that failed, ``detail`` the system's reason."""

    exit_code = 2

    def __init__(self, path: Path, key: str, detail: str, config: Path | None = None) -> None:
        self.path = path
        self.key = key
        self.detail = detail
        self.config = config
        where = f"{config}: {key}" if config is not None else key
        super().__init__(f"{where}: {path} cannot be created or written ({detail})")


class OwnershipLost(VigilError):
    """Another node took a conversation over (its lease epoch grew): this node must
    write nothing more for it and deliver nothing more (cluster backends only)."""

    exit_code = 12

    def __init__(self, conversation: str, node: str, epoch: int, owner: str | None) -> None:
        self.conversation = conversation
        self.node = node
        self.epoch = epoch
        self.owner = owner
        now = f"; {owner} owns it now" if owner else ""
        super().__init__(
            f"conversation {conversation!r}: node {node} lost ownership "
            f"(its lease epoch {epoch} is stale{now}); nothing more is written or "
            "delivered for it from this node"
        )


class UnknownJobError(VigilError, KeyError):
    """``Config.job(name)`` was asked for a job the config does not define."""

    exit_code = 2

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = list(known)
        super().__init__(name, self.known)

    def __str__(self) -> str:
        known = ", ".join(self.known) if self.known else "none are configured"
        return f"no heartbeat job named {self.name!r} (jobs: {known})"


class UntrustedPathError(VigilError):
    """A directory or file vigil would trust is owned by another user, writable by
    others, or in the wrong place (``key`` names it in the config)."""

    exit_code = 2

    def __init__(self, path: Path, key: str, problem: str, config: Path | None = None) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        self.config = config
        where = f"{config}: {key}" if config is not None else key
        super().__init__(f"{where}: {path} {problem}; refusing to use it")


class RuntimeDirBusyError(VigilError):
    """Another vigil runs with this runtime directory (its own state directory)."""

    exit_code = 7

    def __init__(self, runtime_dir: Path, holder: str) -> None:
        self.runtime_dir = runtime_dir
        self.holder = holder
        super().__init__(
            f"another vigil{(' (' + holder + ')') if holder else ''} is already running with "
            f"runtime directory {runtime_dir}; give each daemon its own runtime_dir"
        )


class HeadsError(VigilError):
    """``state_dir/heads`` (the commitment to every journal's head) is unusable."""

    exit_code = 4

    def __init__(self, path: Path, problem: str, *, key_id: str | None = None) -> None:
        self.path = path
        self.problem = problem
        self.key_id = key_id  # set when the keyring lacks the key it was sealed with
        super().__init__(
            f"{path}: {problem}; it commits to how far each journal reaches. Restore it "
            "from a backup, or delete it to commit to the journals as they are"
        )


class JournalRollbackError(VigilError):
    """Journals are behind their committed heads: records or files were removed."""

    exit_code = 4

    def __init__(self, heads: Path, problems: Sequence[str]) -> None:
        self.heads = heads
        self.problems = list(problems)
        listed = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(
            f"journals in {heads.parent} are behind what {heads} committed to (truncation "
            f"or rollback); nothing was changed:\n{listed}\nRestore them from a backup; "
            f"if they were removed or restored on purpose, delete {heads} and start again"
        )
