/* Fault injection at the system-call boundary, for tests/test_storage_failure.py: once the
 * file named by FASTXMPP_EIO_TRIGGER exists, fdatasync() and fsync() fail with EIO, as
 * they do when a disk goes bad under a running server. Loaded into the real server process
 * with LD_PRELOAD; the server's own code is untouched. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int triggered(void)
{
    const char *path = getenv("FASTXMPP_EIO_TRIGGER");
    return path != NULL && access(path, F_OK) == 0;
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (triggered()) {
        errno = EIO;
        return -1;
    }
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}

int fsync(int fd)
{
    static int (*real)(int);
    if (triggered()) {
        errno = EIO;
        return -1;
    }
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
