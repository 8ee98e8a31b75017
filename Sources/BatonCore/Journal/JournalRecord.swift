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

/// The on-disk framing of records: magic, payload length, CRC-32C,
/// payload. A reader can tell a torn tail (the write never finished) from
/// corruption (something damaged acknowledged data).
///
/// A journal record (`magic`) also says how far its segment was durable
/// (fdatasync'd) when it was written, under the CRC. Pages written after the
/// last sync may reach the disk in any order before a power cut, so a bad
/// record with valid ones after it is not by itself damage: it is only if a
/// later record says the bad one had been made durable. Frames on the wire
/// (`wireMagic`) carry no such claim.
public enum JournalCodec {
    public static let magic: UInt32 = 0x3254_4E42 // "BNT2"
    public static let wireMagic: UInt32 = 0x5254_4E42 // "BNTR"
    public static let headerBytes = 12
    /// The durability claim of a journal record, after the header.
    static let claimBytes = 8
    public static let maxPayloadBytes = WireLimits.maxFrameBytes

    /// A frame for the wire, or for the journal with `durableThrough`: the
    /// offset of the segment up to which every byte had been made durable
    /// before this record was written.
    public static func encode(_ record: JournalRecord, durableThrough: UInt64? = nil) -> [UInt8] {
        var w = ByteWriter(capacity: 104 + (record.operation.dataCount))
        w.write(durableThrough == nil ? wireMagic : magic)
        w.write(UInt32(0))
        w.write(UInt32(0))
        if let durableThrough { w.write(durableThrough) }
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
        /// The journal's unsynced end did not reach the disk whole: a record
        /// never completely written (zeros follow where it should end), or,
        /// after a power cut, pages of the last records written back out of
        /// order, and no later record says any of it had been made durable.
        /// Nothing fsync'd is in it: it is dropped from `offset` on.
        case tornTail(offset: Int)
        /// A damaged record with data after it (in the same boot), or that a
        /// later record says was durable (after a power cut): acknowledged
        /// data is damaged, so the export must not be served from this journal.
        case corrupt(offset: Int, reason: String)
    }

    /// Scans records from the start of `bytes`, which begin at `segmentOffset`
    /// of their segment. `afterPowerCut`: the page cache that wrote them is
    /// gone (another boot), so pages written after the last sync may be
    /// missing in any order; in the same boot they are all there, and any
    /// bad record with data after it is damage.
    public static func scan(_ bytes: UnsafeRawBufferPointer, segmentOffset: Int = 0, afterPowerCut: Bool = false) -> Scan {
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
                guard afterPowerCut else {
                    return Scan(records: records, validBytes: offset, ending: .corrupt(offset: offset, reason: failure.reason))
                }
                guard let proof = durabilityProof(bytes, past: offset, segmentOffset: segmentOffset) else {
                    return Scan(records: records, validBytes: offset, ending: .tornTail(offset: offset))
                }
                return Scan(records: records, validBytes: offset, ending: .corrupt(
                    offset: offset,
                    reason: "\(failure.reason), and the record at offset \(segmentOffset + proof.offset) says the segment was durable through \(proof.durableThrough)"))
            }
        }
        return Scan(records: records, validBytes: offset, ending: .clean)
    }

    public static func scan(_ bytes: [UInt8], segmentOffset: Int = 0, afterPowerCut: Bool = false) -> Scan {
        bytes.withUnsafeBytes { scan($0, segmentOffset: segmentOffset, afterPowerCut: afterPowerCut) }
    }

    struct Failure: Error {
        var reason: String
        /// Where the bad record says it ends: if nothing but zeros follows,
        /// it is a write that never finished, not damage.
        var declaredEnd: Int
    }

    /// A valid journal record after `offset` that says the segment was
    /// durable past `offset`, and its claim. Records are found by their magic
    /// and CRC; the search goes on from the end of each one found, so a
    /// record's data (which may hold anything a client wrote) is not searched.
    static func durabilityProof(_ bytes: UnsafeRawBufferPointer, past offset: Int,
                                segmentOffset: Int) -> (offset: Int, durableThrough: UInt64)? {
        var candidate = offset + 1
        while candidate + headerBytes + claimBytes <= bytes.count {
            guard bytes.loadUnaligned(fromByteOffset: candidate, as: UInt32.self).littleEndian == magic,
                  case .success(let (_, next)) = decodeRecord(bytes, at: candidate) else {
                candidate += 1
                continue
            }
            let claim = bytes.loadUnaligned(fromByteOffset: candidate + headerBytes, as: UInt64.self).littleEndian
            if claim > UInt64(segmentOffset + offset) { return (candidate, claim) }
            candidate = next
        }
        return nil
    }

    static func decodeRecord(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Result<(JournalRecord, Int), Failure> {
        guard bytes.count - offset >= headerBytes else {
            return .failure(Failure(reason: "incomplete record header", declaredEnd: bytes.count))
        }
        let magicFound = bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self).littleEndian
        let length = Int(bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self).littleEndian)
        let crc = bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self).littleEndian
        let start = offset + headerBytes
        guard magicFound == magic || magicFound == wireMagic else {
            return .failure(Failure(reason: "bad record magic", declaredEnd: start))
        }
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
            if magicFound == magic { _ = try r.readUInt64() } // the durability claim, for `durabilityClaim`
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
