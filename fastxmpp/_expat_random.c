/* libexpat seeds its hash tables with arc4random_buf() when it was built against glibc 2.36
 * or newer (Debian 12's libexpat.a is). Linked statically into the parser, that one call
 * would make the module need glibc 2.36 and the wheel manylinux_2_36. This definition takes
 * its place inside the module (hidden: never exported, never seen by other libraries), reads
 * the same kernel source through the getrandom system call, and keeps the wheel at
 * manylinux2014 (glibc 2.17). See setup.py. */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>

__attribute__((visibility("hidden"))) void arc4random_buf(void *buffer, size_t length)
{
    unsigned char *out = buffer;
    while (length > 0) {
        long got = syscall(SYS_getrandom, out, length, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            break; /* a kernel older than 3.17: /dev/urandom below */
        }
        out += got;
        length -= (size_t)got;
    }
    if (length > 0) {
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        while (fd >= 0 && length > 0) {
            ssize_t got = read(fd, out, length);
            if (got <= 0) {
                if (got < 0 && errno == EINTR)
                    continue;
                break;
            }
            out += got;
            length -= (size_t)got;
        }
        if (fd >= 0)
            close(fd);
    }
}
