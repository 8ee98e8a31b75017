/// The permission checks a server makes for a squashed caller (issue 10).
///
/// A client's kernel checks permissions itself (`default_permissions`) for
/// the uid it knows, so a squashed root would still pass its own checks as
/// root: the server makes them again for the identity it maps the caller to,
/// before anything is journaled. They follow Linux's rules (`may_open`,
/// `may_delete`, `inode_change_ok`, `chown_ok`), with one group: the anonymous
/// identity's, since the wire carries no supplementary groups.
extension Namespace {
    /// Why `caller` may not do `operation`, or nil when it may (or when the
    /// namespace will refuse it anyway: a missing inode, a bad name).
    public func permissionProblem(_ operation: Operation, by caller: Credentials) -> Errno? {
        if caller.uid == 0 { return nil }
        switch operation {
        case .getattr, .readlink, .statfs, .listxattr, .fsync, .release, .write, .forget, .getLock, .setLock, .releaseLocks,
             .expireSessionLocks, .cancelLockWait:
            // A lock goes through a descriptor: the client's kernel checked its access mode.
            // Attributes are for anyone who found the inode; a write's handle is checked as it is applied.
            return nil
        case .read(let ino, let handle, _, _):
            // A read goes through a handle opened for reading: it was checked then.
            guard let open = handles[handle], open.inode == ino, open.flags & OpenFlags.accessMask != OpenFlags.writeOnly else {
                return .EBADF
            }
            return nil
        case .lookup(let parent, _):
            return lacks(.search, on: parent, caller)
        case .readdir(let ino, _, _):
            return lacks(.read, on: ino, caller)
        case .getxattr(let ino, let name, _):
            return isUserXattr(name) ? lacks(.read, on: ino, caller) : nil
        case .setxattr(let ino, let name, _, _), .removexattr(let ino, let name):
            return isUserXattr(name) ? lacks(.write, on: ino, caller) : .EPERM
        case .mknod(let parent, _, _, _, _), .mkdir(let parent, _, _, _), .symlink(let parent, _, _, _),
             .link(_, let parent, _):
            return lacks([.write, .search], on: parent, caller)
        case .create(let parent, let name, _, let flags, _):
            if flags & OpenFlags.exclusive == 0, let existing = child(parent, name) {
                return mayOpen(existing, flags: flags, caller)
            }
            return lacks([.write, .search], on: parent, caller)
        case .open(let ino, let flags):
            return mayOpen(ino, flags: flags, caller)
        case .unlink(let parent, let name), .rmdir(let parent, let name):
            return mayRemove(name, from: parent, caller)
        case .rename(let parent, let name, let newParent, let newName, let flags):
            if let problem = mayRemove(name, from: parent, caller) { return problem }
            if child(newParent, newName) != nil || flags & RenameFlags.exchange != 0 {
                if let problem = mayRemove(newName, from: newParent, caller) { return problem }
            } else if let problem = lacks([.write, .search], on: newParent, caller) {
                return problem
            }
            // A directory that moves to another parent has its ".." rewritten.
            if parent != newParent, let moved = child(parent, name), isDirectory(moved) {
                return lacks(.write, on: moved, caller)
            }
            return nil
        case .setattr(let ino, let changes, _):
            return maySet(changes, on: ino, caller)
        }
    }

    struct Access: OptionSet {
        let rawValue: UInt32
        static let read = Access(rawValue: 4)
        static let write = Access(rawValue: 2)
        static let search = Access(rawValue: 1)
    }

    private func lacks(_ wanted: Access, on ino: InodeNumber, _ caller: Credentials) -> Errno? {
        guard let attributes = inodes[ino]?.attributes else { return nil }
        let shift: UInt32 = caller.uid == attributes.uid ? 6 : caller.gid == attributes.gid ? 3 : 0
        return (attributes.mode >> shift) & wanted.rawValue == wanted.rawValue ? nil : .EACCES
    }

    private func mayOpen(_ ino: InodeNumber, flags: UInt32, _ caller: Credentials) -> Errno? {
        var wanted: Access = []
        switch flags & OpenFlags.accessMask {
        case OpenFlags.writeOnly: wanted = .write
        case OpenFlags.readWrite: wanted = [.read, .write]
        default: wanted = .read
        }
        if flags & OpenFlags.truncate != 0 { wanted.insert(.write) }
        return lacks(wanted, on: ino, caller)
    }

    /// `may_delete`: write and search on the directory, and in a sticky
    /// directory only the entry's or the directory's owner removes it.
    private func mayRemove(_ name: FileName, from parent: InodeNumber, _ caller: Credentials) -> Errno? {
        if let problem = lacks([.write, .search], on: parent, caller) { return problem }
        guard let directory = inodes[parent]?.attributes, directory.mode & Mode.sticky != 0,
              let entry = child(parent, name).flatMap({ inodes[$0]?.attributes }) else { return nil }
        return caller.uid == directory.uid || caller.uid == entry.uid ? nil : .EPERM
    }

    /// `setattr_prepare`: the owner changes mode and times; nobody but root
    /// gives a file away; the owner may give it to their own group; a size
    /// needs write permission, and so does "now" as the time, for a non-owner.
    private func maySet(_ changes: AttributeChanges, on ino: InodeNumber, _ caller: Credentials) -> Errno? {
        guard let attributes = inodes[ino]?.attributes else { return nil }
        let owner = caller.uid == attributes.uid
        if let uid = changes.uid, !(owner && uid == attributes.uid) { return .EPERM }
        if let gid = changes.gid, !(owner && (gid == attributes.gid || gid == caller.gid)) { return .EPERM }
        if changes.mode != nil, !owner { return .EPERM }
        for time in [changes.atime, changes.mtime] {
            switch time {
            case .set?: if !owner { return .EPERM }
            case .now?: if !owner, let problem = lacks(.write, on: ino, caller) { return problem }
            case nil: break
            }
        }
        if changes.size != nil { return lacks(.write, on: ino, caller) }
        return nil
    }

    private func child(_ parent: InodeNumber, _ name: FileName) -> InodeNumber? { inodes[parent]?.directory?[name] }

    private func isDirectory(_ ino: InodeNumber) -> Bool { inodes[ino].map { Mode.isDirectory($0.attributes.mode) } ?? false }

    private func isUserXattr(_ name: FileName) -> Bool { name.bytes.starts(with: Array("user.".utf8)) }
}
