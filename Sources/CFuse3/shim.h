// Swift's importer does not see -D flags, so the API version is fixed here.
// 312: fuse_session_loop_mt is a real function (with 34 it is a macro).
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <sys/xattr.h>
#include <sys/statvfs.h>
#include <linux/fs.h>
