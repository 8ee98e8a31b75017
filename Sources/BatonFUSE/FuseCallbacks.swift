import CFuse3
import Glibc

// The C side of the session: one capture-free closure per low-level op. Each
// turns its C arguments into Swift values (copying names and data, which
// libfuse reuses after the callback returns), wraps the request in its reply
// object and calls the operations. None of them waits on anything.

/// The session's shared state, reached from a request.
private func core(_ request: fuse_req_t) -> SessionCore {
    Unmanaged<SessionCore>.fromOpaque(fuse_req_userdata(request)!).takeUnretainedValue()
}

/// The operations and a pending-request handle that keeps the session alive until answered.
private func dispatch(_ request: fuse_req_t) -> (any FuseOperations, FuseRequest, PendingRequest) {
    let core = core(request)
    guard let operations = core.operations else {
        preconditionFailure("FUSE request before run() installed the operations")
    }
    return (operations, FuseRequest(request), PendingRequest(request: request, session: .passRetained(core)))
}

private func bytes(_ string: UnsafePointer<CChar>) -> [UInt8] {
    Array(UnsafeRawBufferPointer(start: string, count: strlen(string)))
}

func makeOperationTable() -> fuse_lowlevel_ops {
    var table = fuse_lowlevel_ops()

    table.`init` = { userdata, connection in
        let core = Unmanaged<SessionCore>.fromOpaque(userdata!).takeUnretainedValue()
        guard let operations = core.operations, let connection else {
            preconditionFailure("FUSE init before run() installed the operations")
        }
        var settings = FuseConnection(connection.pointee)
        operations.initialize(&settings)
        settings.apply(to: &connection.pointee)
    }

    table.forget = { request, inode, lookups in
        let core = core(request!)
        core.operations?.forget(FuseRequest(request!), inode: inode, lookups: lookups)
        fuse_reply_none(request)
    }

    table.forget_multi = { request, count, forgets in
        let core = core(request!)
        let caller = FuseRequest(request!)
        for forget in UnsafeBufferPointer(start: forgets, count: count) {
            core.operations?.forget(caller, inode: forget.ino, lookups: forget.nlookup)
        }
        fuse_reply_none(request)
    }

    table.lookup = { request, parent, name in
        let (operations, caller, pending) = dispatch(request!)
        operations.lookup(caller, parent: parent, name: bytes(name!), reply: FuseEntryReply(pending))
    }

    table.getattr = { request, inode, _ in
        let (operations, caller, pending) = dispatch(request!)
        operations.getattr(caller, inode: inode, reply: FuseAttributesReply(pending))
    }

    table.setattr = { request, inode, attributes, toSet, _ in
        let (operations, caller, pending) = dispatch(request!)
        operations.setattr(caller, inode: inode, changes: FuseAttributeChanges(attributes!.pointee, toSet: toSet),
                           reply: FuseAttributesReply(pending))
    }

    table.readlink = { request, inode in
        let (operations, caller, pending) = dispatch(request!)
        operations.readlink(caller, inode: inode, reply: FuseDataReply(pending))
    }

    table.mknod = { request, parent, name, mode, rdev in
        let (operations, caller, pending) = dispatch(request!)
        operations.mknod(caller, parent: parent, name: bytes(name!), mode: UInt32(mode), rdev: UInt64(rdev),
                         reply: FuseEntryReply(pending))
    }

    table.mkdir = { request, parent, name, mode in
        let (operations, caller, pending) = dispatch(request!)
        operations.mkdir(caller, parent: parent, name: bytes(name!), mode: UInt32(mode), reply: FuseEntryReply(pending))
    }

    table.unlink = { request, parent, name in
        let (operations, caller, pending) = dispatch(request!)
        operations.unlink(caller, parent: parent, name: bytes(name!), reply: FuseEmptyReply(pending))
    }

    table.rmdir = { request, parent, name in
        let (operations, caller, pending) = dispatch(request!)
        operations.rmdir(caller, parent: parent, name: bytes(name!), reply: FuseEmptyReply(pending))
    }

    table.symlink = { request, target, parent, name in
        let (operations, caller, pending) = dispatch(request!)
        operations.symlink(caller, parent: parent, name: bytes(name!), target: bytes(target!),
                           reply: FuseEntryReply(pending))
    }

    table.rename = { request, parent, name, newParent, newName, flags in
        let (operations, caller, pending) = dispatch(request!)
        operations.rename(caller, parent: parent, name: bytes(name!), newParent: newParent, newName: bytes(newName!),
                          flags: UInt32(flags), reply: FuseEmptyReply(pending))
    }

    table.link = { request, inode, newParent, newName in
        let (operations, caller, pending) = dispatch(request!)
        operations.link(caller, inode: inode, newParent: newParent, newName: bytes(newName!),
                        reply: FuseEntryReply(pending))
    }

    table.open = { request, inode, info in
        let (operations, caller, pending) = dispatch(request!)
        operations.open(caller, inode: inode, flags: info!.pointee.flags, reply: FuseOpenReply(pending))
    }

    table.read = { request, inode, size, offset, info in
        let (operations, caller, pending) = dispatch(request!)
        operations.read(caller, inode: inode, handle: info!.pointee.fh, offset: UInt64(truncatingIfNeeded: offset),
                        size: UInt32(clamping: size), reply: FuseDataReply(pending))
    }

    table.write = { request, inode, buffer, size, offset, info in
        let (operations, caller, pending) = dispatch(request!)
        // Valid until this callback returns: the operation copies it (once, into its frame).
        let data = UnsafeRawBufferPointer(start: buffer, count: size)
        operations.write(caller, inode: inode, handle: info!.pointee.fh, offset: UInt64(truncatingIfNeeded: offset),
                         data: data, reply: FuseWriteReply(pending))
    }

    table.flush = { request, inode, info in
        let (operations, caller, pending) = dispatch(request!)
        operations.flush(caller, inode: inode, handle: info!.pointee.fh, lockOwner: info!.pointee.lock_owner,
                         reply: FuseEmptyReply(pending))
    }

    table.release = { request, inode, info in
        let (operations, caller, pending) = dispatch(request!)
        let flockOwner = info!.pointee.flock_release != 0 ? info!.pointee.lock_owner : nil
        operations.release(caller, inode: inode, handle: info!.pointee.fh, flockOwner: flockOwner, reply: FuseEmptyReply(pending))
    }

    table.getlk = { request, inode, info, lock in
        let (operations, caller, pending) = dispatch(request!)
        operations.getlk(caller, inode: inode, lockOwner: info!.pointee.lock_owner, lock: FuseLock(lock!.pointee),
                         reply: FuseLockReply(pending))
    }

    table.setlk = { request, inode, info, lock, sleep in
        let (operations, caller, pending) = dispatch(request!)
        operations.setlk(caller, inode: inode, lockOwner: info!.pointee.lock_owner, lock: FuseLock(lock!.pointee), sleep: sleep != 0,
                         reply: FuseEmptyReply(pending))
    }

    table.flock = { request, inode, info, operation in
        let (operations, caller, pending) = dispatch(request!)
        operations.flock(caller, inode: inode, lockOwner: info!.pointee.lock_owner, operation: operation, reply: FuseEmptyReply(pending))
    }

    table.fsync = { request, inode, dataOnly, info in
        let (operations, caller, pending) = dispatch(request!)
        operations.fsync(caller, inode: inode, handle: info!.pointee.fh, dataOnly: dataOnly != 0,
                         reply: FuseEmptyReply(pending))
    }

    table.opendir = { request, inode, info in
        let (operations, caller, pending) = dispatch(request!)
        operations.opendir(caller, inode: inode, flags: info!.pointee.flags, reply: FuseOpenReply(pending))
    }

    table.readdir = { request, inode, size, offset, info in
        let (operations, caller, pending) = dispatch(request!)
        operations.readdir(caller, inode: inode, handle: info!.pointee.fh, offset: UInt64(truncatingIfNeeded: offset),
                           reply: FuseDirectoryReply(pending, sizeBytes: size))
    }

    table.releasedir = { request, inode, info in
        let (operations, caller, pending) = dispatch(request!)
        operations.releasedir(caller, inode: inode, handle: info!.pointee.fh, reply: FuseEmptyReply(pending))
    }

    table.fsyncdir = { request, inode, dataOnly, info in
        let (operations, caller, pending) = dispatch(request!)
        operations.fsyncdir(caller, inode: inode, handle: info!.pointee.fh, dataOnly: dataOnly != 0,
                            reply: FuseEmptyReply(pending))
    }

    table.statfs = { request, inode in
        let (operations, caller, pending) = dispatch(request!)
        operations.statfs(caller, inode: inode, reply: FuseStatisticsReply(pending))
    }

    table.setxattr = { request, inode, name, value, size, flags in
        let (operations, caller, pending) = dispatch(request!)
        let data = Array(UnsafeRawBufferPointer(start: value, count: size))
        operations.setxattr(caller, inode: inode, name: bytes(name!), value: data, flags: flags,
                            reply: FuseEmptyReply(pending))
    }

    table.getxattr = { request, inode, name, size in
        let (operations, caller, pending) = dispatch(request!)
        operations.getxattr(caller, inode: inode, name: bytes(name!), size: UInt32(clamping: size),
                            reply: FuseXattrReply(pending))
    }

    table.listxattr = { request, inode, size in
        let (operations, caller, pending) = dispatch(request!)
        operations.listxattr(caller, inode: inode, size: UInt32(clamping: size), reply: FuseXattrReply(pending))
    }

    table.removexattr = { request, inode, name in
        let (operations, caller, pending) = dispatch(request!)
        operations.removexattr(caller, inode: inode, name: bytes(name!), reply: FuseEmptyReply(pending))
    }

    table.create = { request, parent, name, mode, info in
        let (operations, caller, pending) = dispatch(request!)
        operations.create(caller, parent: parent, name: bytes(name!), mode: UInt32(mode), flags: info!.pointee.flags,
                          reply: FuseCreateReply(pending))
    }

    return table
}
