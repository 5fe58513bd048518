/* faultfs: an LD_PRELOAD shim that injects file-system faults into one process.
 *
 * It touches only writes and fsyncs on files under $FAULTFS_DIR (matched by the
 * path /proc/self/fd/N points to), so the daemon's log, pipes and sockets and
 * every file elsewhere are left alone. It removes LD_PRELOAD from the environment
 * at load, so child processes (the Claude CLI) never carry it.
 *
 * What it does is read from the file $FAULTFS_CONTROL at every matched call, so a
 * test switches faults on and off while the process runs:
 *
 *   (missing or empty)  nothing: calls pass through
 *   full                the disk is full: a write stores half its bytes and returns
 *                       that short count; the next write to that descriptor fails
 *                       with ENOSPC (as a filling file system behaves)
 *   fsync-eio           fsync and fdatasync fail with EIO
 *   tear N              the N-th matched write of this process (counted from 1)
 *                       stores half its bytes, announces itself and sleeps 60 s
 *                       (to be SIGKILLed: a torn record), then writes the rest
 *
 * Each injected fault is announced as one JSON line on stdout (fd 1), e.g.
 * {"event": "faultfs", "fault": "enospc", "path": "..."}, so a test reading the
 * daemon's log sees it in order with the daemon's own lines.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 4096

static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static char watched[PATH_MAX];
static size_t watched_len;
static char control[PATH_MAX];
static unsigned long matched_writes;
static unsigned char short_written[MAX_FDS];

__attribute__((constructor)) static void faultfs_init(void) {
    real_write = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *dir = getenv("FAULTFS_DIR");
    const char *ctl = getenv("FAULTFS_CONTROL");
    if (dir != NULL && dir[0] == '/' && strlen(dir) + 2 < sizeof watched) {
        snprintf(watched, sizeof watched, "%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/");
        watched_len = strlen(watched);
    }
    if (ctl != NULL && strlen(ctl) < sizeof control) {
        snprintf(control, sizeof control, "%s", ctl);
    }
    unsetenv("LD_PRELOAD");
}

static int path_of(int fd, char *out, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size - 1);
    if (n <= 0) {
        return 0;
    }
    out[n] = '\0';
    return 1;
}

static int watched_fd(int fd, char *path, size_t size) {
    if (watched_len == 0 || fd < 0 || !path_of(fd, path, size)) {
        return 0;
    }
    return strncmp(path, watched, watched_len) == 0;
}

/* The control file's first line; "" when it is missing or empty. */
static void read_mode(char *mode, size_t size) {
    mode[0] = '\0';
    if (control[0] == '\0') {
        return;
    }
    int fd = open(control, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return;
    }
    ssize_t n = read(fd, mode, size - 1);
    close(fd);
    if (n <= 0) {
        mode[0] = '\0';
        return;
    }
    mode[n] = '\0';
    mode[strcspn(mode, "\r\n")] = '\0';
}

static void announce(const char *fault, const char *path, unsigned long count) {
    char line[PATH_MAX + 160];
    int n = snprintf(line, sizeof line,
                     "{\"event\": \"faultfs\", \"fault\": \"%s\", \"path\": \"%s\", "
                     "\"matched_write\": %lu, \"pid\": %d}\n",
                     fault, path, count, (int)getpid());
    if (n > 0) {
        real_write(1, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    }
}

ssize_t write(int fd, const void *buf, size_t count) {
    char path[PATH_MAX];
    if (!watched_fd(fd, path, sizeof path)) {
        return real_write(fd, buf, count);
    }
    unsigned long number = __atomic_add_fetch(&matched_writes, 1, __ATOMIC_SEQ_CST);
    char mode[128];
    read_mode(mode, sizeof mode);
    if (strcmp(mode, "full") == 0) {
        int slot = fd < MAX_FDS ? fd : MAX_FDS - 1;
        if (count > 1 && !short_written[slot]) {
            ssize_t n = real_write(fd, buf, count / 2);
            if (n > 0) {
                short_written[slot] = 1;
                announce("short_write", path, number);
            }
            return n;
        }
        short_written[slot] = 0;
        announce("enospc", path, number);
        errno = ENOSPC;
        return -1;
    }
    unsigned long tear_at = 0;
    if (sscanf(mode, "tear %lu", &tear_at) == 1 && tear_at == number && count > 1) {
        ssize_t n = real_write(fd, buf, count / 2);
        if (n <= 0) {
            return n;
        }
        announce("torn_write", path, number);
        struct timespec pause = {60, 0};
        while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
        }
        ssize_t rest = real_write(fd, (const char *)buf + n, count - (size_t)n);
        return rest < 0 ? n : n + rest;
    }
    return real_write(fd, buf, count);
}

static int fail_sync(int fd, int (*real)(int)) {
    char path[PATH_MAX];
    if (watched_fd(fd, path, sizeof path)) {
        char mode[128];
        read_mode(mode, sizeof mode);
        if (strcmp(mode, "fsync-eio") == 0) {
            announce("fsync_eio", path, __atomic_load_n(&matched_writes, __ATOMIC_SEQ_CST));
            errno = EIO;
            return -1;
        }
    }
    return real(fd);
}

int fsync(int fd) { return fail_sync(fd, real_fsync); }

int fdatasync(int fd) { return fail_sync(fd, real_fdatasync); }
