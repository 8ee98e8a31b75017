/// A checkpoint is the whole namespace at one journal sequence, so that
/// replay starts there instead of at the first record. Framed like a journal
/// record: magic, length, CRC-32C, payload.
extension Namespace {
    static let checkpointMagic: UInt32 = 0x5043_4E42 // "BNCP"
    /// 2: the lock table (locks, then lost marks) follows the reply cache (a version 1 checkpoint has no locks).
    static let checkpointVersion: UInt32 = 2

    public func checkpoint() -> [UInt8] {
        var w = ByteWriter(capacity: 64 + inodes.count * 96)
        w.write(Self.checkpointMagic)
        w.write(UInt64(0))
        w.write(UInt32(0))
        w.write(Self.checkpointVersion)
        w.write(appliedSequence)
        w.write(appliedEpoch)
        w.write(nextInode)
        w.write(nextHandle)
        w.write(UInt64(inodes.count))
        for (ino, inode) in inodes.sorted(by: { $0.key < $1.key }) {
            w.write(ino)
            w.write(inode.attributes)
            w.write(inode.parent)
            w.write(UInt32(inode.openHandles))
            w.write(inode.directory != nil)
            inode.directory?.encode(to: &w)
            w.write(inode.symlinkTarget != nil)
            if let target = inode.symlinkTarget { w.write(bytes: target) }
            w.write(UInt32(inode.xattrs.count))
            for (name, value) in inode.xattrs.sorted(by: { $0.key.bytes.lexicographicallyPrecedes($1.key.bytes) }) {
                w.write(name)
                w.write(bytes: value)
            }
        }
        w.write(UInt64(handles.count))
        for (id, handle) in handles.sorted(by: { $0.key < $1.key }) {
            w.write(id)
            w.write(handle.inode)
            w.write(handle.flags)
        }
        replyCache.encode(to: &w)
        locks.encode(to: &w)
        var bytes = w.bytes
        let payload = 16
        let length = UInt64(bytes.count - payload)
        let crc = bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[payload...])) }
        withUnsafeBytes(of: length.littleEndian) { for i in 0..<8 { bytes[4 + i] = $0[i] } }
        withUnsafeBytes(of: crc.littleEndian) { for i in 0..<4 { bytes[12 + i] = $0[i] } }
        return bytes
    }

    public init(checkpoint bytes: [UInt8]) throws(DecodeError) {
        self = try ByteReader.decode(bytes) { (r: inout ByteReader) throws(DecodeError) in
            var namespace = Namespace()
            namespace.inodes = [:]
            guard try r.readUInt32() == Self.checkpointMagic else { throw .invalid("not a Baton checkpoint (bad magic)") }
            let length = try r.readUInt64()
            let crc = try r.readUInt32()
            guard length == UInt64(r.remaining) else {
                throw .invalid("checkpoint length \(length) does not match the file (\(r.remaining) bytes)")
            }
            let actual = bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[16...])) }
            guard actual == crc else { throw .invalid("checkpoint checksum mismatch") }
            let version = try r.readUInt32()
            guard (1...Self.checkpointVersion).contains(version) else { throw .invalid("checkpoint version \(version) is not supported") }
            namespace.appliedSequence = try r.readUInt64()
            namespace.appliedEpoch = try r.readUInt64()
            namespace.nextInode = try r.readUInt64()
            namespace.nextHandle = try r.readUInt64()
            let inodeCount = try r.readUInt64()
            // Sized once rather than rehashed as it fills; an
            // inode takes at least 64 bytes, so a lying count cannot reserve more.
            namespace.inodes.reserveCapacity(Int(min(inodeCount, UInt64(r.remaining / 64))))
            for _ in 0..<inodeCount {
                let ino = try r.readUInt64()
                var inode = Inode(attributes: try r.readAttributes(), parent: try r.readUInt64())
                inode.openHandles = Int(try r.readUInt32())
                if try r.readBool() { inode.directory = try Directory.decode(from: &r) }
                if try r.readBool() { inode.symlinkTarget = try r.readBytes(limit: WireLimits.maxSymlinkBytes) }
                let xattrCount = try r.readUInt32()
                for _ in 0..<xattrCount {
                    let name = try r.readName()
                    inode.xattrs[name] = try r.readBytes(limit: WireLimits.maxXattrValueBytes)
                }
                namespace.inodes[ino] = inode
            }
            let handleCount = try r.readUInt64()
            for _ in 0..<handleCount {
                let id = try r.readUInt64()
                namespace.handles[id] = Handle(inode: try r.readUInt64(), flags: try r.readUInt32())
            }
            namespace.replyCache = try ReplyCache.decode(from: &r)
            if version >= 2 { namespace.locks = try LockTable.decode(from: &r) }
            try r.expectEnd()
            return namespace
        }
        guard inodes[rootInode]?.directory != nil else { throw .invalid("checkpoint has no root directory") }
    }
}

extension Namespace {
    /// The same files, directories, attributes, open handles and journal
    /// position; cached replies may differ, because each node drops those
    /// its clients confirmed on its own (not journaled).
    public func sameFiles(as other: Namespace) -> Bool { firstDifference(from: other) == nil }

    /// What differs first between the two, for a test's or an admin's message.
    public func firstDifference(from other: Namespace) -> String? {
        if appliedSequence != other.appliedSequence || appliedEpoch != other.appliedEpoch {
            return "position \(appliedSequence)@\(appliedEpoch) vs \(other.appliedSequence)@\(other.appliedEpoch)"
        }
        for ino in Set(inodes.keys).union(other.inodes.keys).sorted() where inodes[ino] != other.inodes[ino] {
            return "inode \(ino): \(inodes[ino].map { "\($0)" } ?? "absent") vs \(other.inodes[ino].map { "\($0)" } ?? "absent")"
        }
        for id in Set(handles.keys).union(other.handles.keys).sorted() where handles[id] != other.handles[id] {
            return "handle \(id): \(handles[id].map { "\($0)" } ?? "absent") vs \(other.handles[id].map { "\($0)" } ?? "absent")"
        }
        if locks != other.locks { return "locks \(locks.locks) vs \(other.locks.locks)" }
        if nextInode != other.nextInode { return "next inode \(nextInode) vs \(other.nextInode)" }
        if nextHandle != other.nextHandle { return "next handle \(nextHandle) vs \(other.nextHandle)" }
        return nil
    }
}

extension Namespace: Equatable {
    /// Two namespaces are equal when a client could not tell them apart:
    /// same inodes, entries, cookies, handles and cached replies.
    public static func == (a: Namespace, b: Namespace) -> Bool {
        a.inodes == b.inodes && a.handles == b.handles && a.nextInode == b.nextInode && a.nextHandle == b.nextHandle
            && a.replyCache == b.replyCache && a.locks == b.locks && a.appliedSequence == b.appliedSequence && a.appliedEpoch == b.appliedEpoch
    }
}
