// What Swift's Glibc module leaves out: glibc's malloc tuning, process file
// descriptors (pidfd: signal and wait for one process, not a PID that may be
// reused), and the GNU sync_file_range, syncfs and fallocate (declared here: the
// module is built without _GNU_SOURCE).
#include <malloc.h>
#include <sys/pidfd.h>

int sync_file_range(int fd, long offset, long nbytes, unsigned int flags);
#define BATON_SYNC_FILE_RANGE_WRITE 2
int syncfs(int fd);
int fallocate(int fd, int mode, long offset, long len);
#define BATON_FALLOC_FL_KEEP_SIZE 1
#define BATON_FALLOC_FL_PUNCH_HOLE 2

// A network device's flags (IFF_UP, IFF_RUNNING) in this process's network
// namespace, by SIOCGIFFLAGS on `socket`; -1 with errno set. A socket is
// asked, not /sys/class/net, which shows the namespace that mounted sysfs.
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>

static inline int baton_device_flags(int socket, const char *name) {
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(socket, SIOCGIFFLAGS, &request) < 0) return -1;
    return request.ifr_flags;
}
