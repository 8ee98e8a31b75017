/// One mutation as the journal holds it: the client's operation, stamped by
/// the server that applied it. Replaying the records in sequence order on an
/// empty namespace (or on a checkpoint) rebuilds the export exactly, reply
/// cache included.
public struct JournalRecord: Hashable, Sendable {
    /// Position in the export's journal: 1, 2, 3, … with no gaps.
    public var sequence: UInt64
    /// The epoch of the server that wrote it (DESIGN.md §4.2).
    public var epoch: UInt64
    /// The server's clock when it applied the mutation; replay uses it for every timestamp.
    public var time: Timestamp
    /// Who asked, for the reply cache (DESIGN.md §4.3).
    public var session: UInt64
    public var requestSequence: UInt64
    public var operation: Operation
    /// Bytes of a `.write`. For a large write the local journal keeps only
    /// this count: the data is in the node's data file before the record is
    /// written (an "indirect" write, as ZFS's intent log does), so data
    /// reaches the disk once. Records sent to a standby carry the data.
    public var writeCount: UInt32

    public init(sequence: UInt64, epoch: UInt64, time: Timestamp, session: UInt64, requestSequence: UInt64,
                operation: Operation, writeCount: UInt32? = nil) {
        self.sequence = sequence
        self.epoch = epoch
        self.time = time
        self.session = session
        self.requestSequence = requestSequence
        self.operation = operation
        self.writeCount = writeCount ?? UInt32(operation.dataCount)
    }
}

/// The on-disk framing of records: magic, payload length, CRC-32C of the
/// payload, payload. A reader can tell a torn tail (the write never finished)
/// from corruption in the middle (something damaged acknowledged data).
public enum JournalCodec {
    public static let magic: UInt32 = 0x5254_4E42 // "BNTR"
    public static let headerBytes = 12
    public static let maxPayloadBytes = WireLimits.maxFrameBytes

    public static func encode(_ record: JournalRecord) -> [UInt8] {
        var w = ByteWriter(capacity: 96 + (record.operation.dataCount))
        w.write(magic)
        w.write(UInt32(0))
        w.write(UInt32(0))
        w.write(record.sequence)
        w.write(record.epoch)
        w.write(record.time)
        w.write(record.session)
        w.write(record.requestSequence)
        w.write(record.writeCount)
        record.operation.encode(to: &w)
        let payloadCount = w.bytes.count - headerBytes
        let crc = w.bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[headerBytes...])) }
        w.patch(UInt32(payloadCount), at: 4)
        w.patch(crc, at: 8)
        return w.bytes
    }

    /// What a scan of one segment found.
    public struct Scan: Sendable {
        public var records: [JournalRecord]
        /// Offset just past the last good record: where appending continues.
        public var validBytes: Int
        public var ending: Ending
    }

    public enum Ending: Hashable, Sendable {
        /// The records end exactly at the end of the data, or are followed by
        /// zeros only (the unwritten part of a preallocated segment).
        case clean
        /// The last record was never completely written (a crash during the
        /// write): zeros follow where its end should be. It was never
        /// acknowledged and is dropped.
        case tornTail(offset: Int)
        /// A damaged record with data after it: acknowledged data may be
        /// damaged, so the export must not be served from this journal.
        case corrupt(offset: Int, reason: String)
    }

    public static func scan(_ bytes: UnsafeRawBufferPointer) -> Scan {
        var records: [JournalRecord] = []
        var offset = 0
        while offset < bytes.count {
            // A zero header is where writing stopped (the preallocated rest of
            // a segment), if nothing but zeros follows.
            let headerEnd = min(offset + headerBytes, bytes.count)
            if onlyZeros(UnsafeRawBufferPointer(rebasing: bytes[offset..<headerEnd]), from: 0), onlyZeros(bytes, from: offset) {
                break
            }
            switch decodeRecord(bytes, at: offset) {
            case .success(let (record, next)):
                records.append(record)
                offset = next
            case .failure(let failure):
                if onlyZeros(bytes, from: min(failure.declaredEnd, bytes.count)) {
                    return Scan(records: records, validBytes: offset, ending: .tornTail(offset: offset))
                }
                return Scan(records: records, validBytes: offset, ending: .corrupt(offset: offset, reason: failure.reason))
            }
        }
        return Scan(records: records, validBytes: offset, ending: .clean)
    }

    public static func scan(_ bytes: [UInt8]) -> Scan { bytes.withUnsafeBytes { scan($0) } }

    struct Failure: Error {
        var reason: String
        /// Where the bad record says it ends: if nothing but zeros follows,
        /// it is a write that never finished, not damage.
        var declaredEnd: Int
    }

    static func decodeRecord(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Result<(JournalRecord, Int), Failure> {
        guard bytes.count - offset >= headerBytes else {
            return .failure(Failure(reason: "incomplete record header", declaredEnd: bytes.count))
        }
        let magicFound = bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self).littleEndian
        let length = Int(bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self).littleEndian)
        let crc = bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self).littleEndian
        let start = offset + headerBytes
        guard magicFound == magic else { return .failure(Failure(reason: "bad record magic", declaredEnd: start)) }
        guard length <= maxPayloadBytes else {
            return .failure(Failure(reason: "record length \(length) over the limit", declaredEnd: start))
        }
        guard bytes.count - start >= length else {
            return .failure(Failure(reason: "record runs past the end of the segment", declaredEnd: bytes.count))
        }
        let payload = UnsafeRawBufferPointer(rebasing: bytes[start..<start + length])
        guard CRC32C.checksum(payload) == crc else {
            return .failure(Failure(reason: "checksum mismatch", declaredEnd: start + length))
        }
        var r = ByteReader(payload)
        do {
            // Fields in the order they were written.
            let sequence = try r.readUInt64()
            let epoch = try r.readUInt64()
            let time = try r.readTimestamp()
            let session = try r.readUInt64()
            let requestSequence = try r.readUInt64()
            let writeCount = try r.readUInt32()
            let record = JournalRecord(sequence: sequence, epoch: epoch, time: time, session: session,
                                       requestSequence: requestSequence, operation: try Operation.decode(from: &r),
                                       writeCount: writeCount)
            try r.expectEnd()
            return .success((record, start + length))
        } catch {
            return .failure(Failure(reason: "undecodable record: \(error)", declaredEnd: start + length))
        }
    }

    /// Eight bytes at a time: segments are tens of MiB of zeros when new.
    private static func onlyZeros(_ bytes: UnsafeRawBufferPointer, from offset: Int) -> Bool {
        var index = offset
        while bytes.count - index >= 8 {
            if bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self) != 0 { return false }
            index += 8
        }
        while index < bytes.count {
            if bytes[index] != 0 { return false }
            index += 1
        }
        return true
    }
}

extension Operation {
    /// Bytes of file data the operation carries (for buffer sizing).
    public var dataCount: Int {
        if case .write(_, _, _, let data) = self { return data.count }
        return 0
    }
}

extension JournalRecord {
    /// The record as a standby needs it: an indirect write (journaled with
    /// its byte count only) gets its data back from the request.
    public func withWriteData(_ data: UnsafeRawBufferPointer) -> JournalRecord {
        guard case .write(let ino, let handle, let offset, let journaled) = operation, journaled.isEmpty, !data.isEmpty
        else { return self }
        var full = self
        full.operation = .write(ino, handle: handle, offset: offset, data: Array(data))
        return full
    }
}
