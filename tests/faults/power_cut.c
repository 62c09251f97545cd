/* A power cut at any moment, for the real server process (LD_PRELOAD; the server's own code
 * is untouched): every write to a regular file under FASTXMPP_POWER_CUT_DIR that is not yet
 * durable is journaled, so that after SIGKILL a test can put the files back in a state a
 * power cut could have left (tests/power_cut.py applies the journal).
 *
 * The journal (the file FASTXMPP_POWER_CUT_LOG) is a sequence of records:
 *   'W' path-length(u32) path offset(u64) length(u64) old-bytes   a write not yet durable:
 *        the whole 4 KiB pages it touches as they were just before it (zeros past the end
 *        of the file), so every record is page-aligned;
 *   'S' path-length(u32) path                                    fsync()/fdatasync() of the
 *        file succeeded: everything written to it before is durable;
 *   'D' path-length(u32) path offset(u64) length(u64)            a write through a descriptor
 *        opened with O_DSYNC/O_SYNC (durable when it returned: LMDB's meta pages), page-aligned.
 * Integers are little-endian (this machine's order). Writes, syncs and their records happen
 * under one lock, so the journal's order is the order in which they took effect.
 *
 * Once every file written since its last flush is flushed again, the journal is emptied (the
 * records before are of no use): a test that sees it non-empty knows that a cut now reverts
 * something.
 *
 * Not modelled: directory entries (a created or renamed file's name is taken as durable). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define PAGE 4096

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int journal = -1;
/* The files with writes not yet flushed (their paths); past MAX_PENDING files the journal is
 * never emptied. */
#define MAX_PENDING 32
static char *pending[MAX_PENDING];
static int overflowed;

static void note_pending(const char *path)
{
    int free_slot = -1;
    for (int i = 0; i < MAX_PENDING; i++) {
        if (pending[i] != NULL && strcmp(pending[i], path) == 0)
            return;
        if (pending[i] == NULL && free_slot < 0)
            free_slot = i;
    }
    if (free_slot < 0)
        overflowed = 1;
    else if ((pending[free_slot] = strdup(path)) == NULL)
        abort();
}

/* `path` flushed: the journal emptied if no other file waits for a flush. */
static void note_flushed(const char *path)
{
    int others = 0;
    for (int i = 0; i < MAX_PENDING; i++) {
        if (pending[i] != NULL && strcmp(pending[i], path) == 0) {
            free(pending[i]);
            pending[i] = NULL;
        } else if (pending[i] != NULL) {
            others = 1;
        }
    }
    if (!others && !overflowed && ftruncate(journal, 0) != 0)
        abort();
}

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

static void resolve(void)
{
    if (real_write != NULL)
        return;
    real_pwrite = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
    real_writev = (ssize_t (*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    real_pwritev =
        (ssize_t (*)(int, const struct iovec *, int, off_t))dlsym(RTLD_NEXT, "pwritev");
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    real_write = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
}

/* The file's path if `fd` is a regular file under the watched directory, else 0. */
static size_t watched(int fd, char *path)
{
    const char *dir = getenv("FASTXMPP_POWER_CUT_DIR");
    char link[64];
    struct stat st;
    if (dir == NULL || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, PATH_MAX - 1);
    size_t length = strlen(dir);
    if (n <= 0 || (size_t)n <= length || strncmp(path, dir, length) != 0 || path[length] != '/')
        return 0;
    path[n] = '\0';
    return (size_t)n;
}

static void put(const void *data, size_t size)
{
    const char *bytes = data;
    while (size > 0) {
        ssize_t done = real_write(journal, bytes, size);
        if (done <= 0) {
            if (done < 0 && errno == EINTR)
                continue;
            abort(); /* a journal that misses a write would make the test lie */
        }
        bytes += done;
        size -= (size_t)done;
    }
}

static int open_journal(void)
{
    if (journal >= 0)
        return 1;
    const char *name = getenv("FASTXMPP_POWER_CUT_LOG");
    if (name == NULL)
        return 0;
    journal = open(name, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (journal < 0)
        abort();
    return 1;
}

static void header(char kind, const char *path, size_t path_length)
{
    uint32_t n = (uint32_t)path_length;
    put(&kind, 1);
    put(&n, sizeof n);
    put(path, path_length);
}

/* Before a write of `length` bytes at `offset` of `fd`: its pages as they are now ('W'), or,
 * on a synchronous descriptor, a note that they will be durable once it returns ('D'). */
static void before_write(int fd, const char *path, size_t path_length, off_t offset,
                         size_t length)
{
    if (length == 0 || !open_journal())
        return;
    uint64_t start = (uint64_t)offset / PAGE * PAGE;
    uint64_t end = ((uint64_t)offset + length + PAGE - 1) / PAGE * PAGE;
    uint64_t span = end - start;
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0 && (flags & O_DSYNC)) {
        header('D', path, path_length);
        put(&start, sizeof start);
        put(&span, sizeof span);
        return;
    }
    char *old = calloc(1, span);
    if (old == NULL)
        abort();
    size_t got = 0;
    while (got < span) {
        ssize_t n = pread(fd, old + got, span - got, (off_t)(start + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* past the end: zeros */
        got += (size_t)n;
    }
    note_pending(path);
    header('W', path, path_length);
    put(&start, sizeof start);
    put(&span, sizeof span);
    put(old, span);
    free(old);
}

static size_t total(const struct iovec *iov, int count)
{
    size_t sum = 0;
    for (int i = 0; i < count; i++)
        sum += iov[i].iov_len;
    return sum;
}

static off_t current_offset(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0 && (flags & O_APPEND)) {
        struct stat st;
        return fstat(fd, &st) == 0 ? st.st_size : 0;
    }
    return lseek(fd, 0, SEEK_CUR);
}

/* A write to a watched file: journaled first, under the lock (the order of the journal is
 * the order of the writes and syncs). Anything else (sockets, pipes, other files) goes
 * straight through, unslowed. */
#define JOURNALED(offset_expr, length_expr, call)                                            \
    do {                                                                                     \
        char path[PATH_MAX];                                                                 \
        size_t path_length;                                                                  \
        resolve();                                                                           \
        if (fd == journal || (path_length = watched(fd, path)) == 0)                         \
            return call;                                                                     \
        pthread_mutex_lock(&lock);                                                           \
        before_write(fd, path, path_length, (offset_expr), (length_expr));                   \
        ssize_t result = call;                                                               \
        pthread_mutex_unlock(&lock);                                                         \
        return result;                                                                       \
    } while (0)

ssize_t write(int fd, const void *buf, size_t count)
{
    JOURNALED(current_offset(fd), count, real_write(fd, buf, count));
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
{
    JOURNALED(offset, count, real_pwrite(fd, buf, count, offset));
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset)
{
    JOURNALED(offset, count, real_pwrite64(fd, buf, count, offset));
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
    JOURNALED(current_offset(fd), total(iov, iovcnt), real_writev(fd, iov, iovcnt));
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset)
{
    JOURNALED(offset, total(iov, iovcnt), real_pwritev(fd, iov, iovcnt, offset));
}

static int synced(int fd, int (*real)(int))
{
    char path[PATH_MAX];
    size_t path_length = watched(fd, path);
    if (path_length == 0)
        return real(fd);
    /* Under the lock: a write to a watched file waits, so none is taken for durable that
     * came after the flush began. */
    pthread_mutex_lock(&lock);
    int result = real(fd);
    if (result == 0 && open_journal()) {
        header('S', path, path_length);
        note_flushed(path);
    }
    pthread_mutex_unlock(&lock);
    return result;
}

int fsync(int fd)
{
    resolve();
    return synced(fd, real_fsync);
}

int fdatasync(int fd)
{
    resolve();
    return synced(fd, real_fdatasync);
}
