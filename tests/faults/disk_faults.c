/* Disk faults at the system-call boundary, loaded into the real server process with
 * LD_PRELOAD (the server's own code is untouched):
 * - once the file named by FASTXMPP_EIO_TRIGGER exists, fdatasync() and fsync() fail with
 *   EIO, as they do when a disk goes bad (tests/test_storage_failure.py);
 * - once the file named by FASTXMPP_SLOW_SYNC_TRIGGER exists, each fdatasync() and fsync()
 *   first waits half a second, as on a slow disk: a commit is then in progress long enough
 *   for a test to act in the middle of it (tests/test_mam_ordering.py);
 * - while the file named by FASTXMPP_HOLD_SYNC_TRIGGER exists, fdatasync() and fsync() do
 *   not return: a commit stays in progress until the test removes the file
 *   (tests/test_mam_group_commit.py);
 * - FASTXMPP_SYNC_DELAY_US=N: each fdatasync() and fsync() first waits N microseconds, a
 *   disk whose flush takes that long (docs/PERFORMANCE.md: benchmarks on such a disk);
 * - FASTXMPP_SYNC_LOG=path: each fdatasync() and fsync() appends a byte to that file, so a
 *   test counts the server's flushes (tests/test_offline.py). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

static int exists(const char *variable)
{
    const char *path = getenv(variable);
    return path != NULL && access(path, F_OK) == 0;
}

static int faulty_sync(const char *name, int fd)
{
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
    if (exists("FASTXMPP_EIO_TRIGGER")) {
        errno = EIO;
        return -1;
    }
    const char *counted = getenv("FASTXMPP_SYNC_LOG");
    if (counted != NULL) {
        int log = open(counted, O_WRONLY | O_APPEND | O_CREAT, 0600);
        if (log >= 0) {
            (void)write(log, "s", 1);
            close(log);
        }
    }
    const char *delay = getenv("FASTXMPP_SYNC_DELAY_US");
    if (delay != NULL)
        usleep((useconds_t)strtoul(delay, NULL, 10));
    if (exists("FASTXMPP_SLOW_SYNC_TRIGGER"))
        usleep(500000);
    while (exists("FASTXMPP_HOLD_SYNC_TRIGGER"))
        usleep(10000);
    return real(fd);
}

int fdatasync(int fd)
{
    return faulty_sync("fdatasync", fd);
}

int fsync(int fd)
{
    return faulty_sync("fsync", fd);
}
