// What Swift's Glibc module leaves out: glibc's malloc tuning, process file
// descriptors (pidfd: signal and wait for one process, not a PID that may be
// reused), and the GNU sync_file_range (declared here: the module is built
// without _GNU_SOURCE).
#include <malloc.h>
#include <sys/pidfd.h>

int sync_file_range(int fd, long offset, long nbytes, unsigned int flags);
#define BATON_SYNC_FILE_RANGE_WRITE 2
