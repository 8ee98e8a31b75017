// Goal: wire messages and journal records round-trip, and bad bytes are
// refused with an error, never a crash (DESIGN: bad input loses nothing).
// Method: encode/decode every operation kind; feed truncated, oversized and
// random bytes to the decoders; damage journal segments at the tail and in
// the middle.
@testable import BatonCore
import XCTest

final class CodecTests: XCTestCase {
    static let caller = Caller(uid: 1000, gid: 100, umask: 0o022)
    static let operations: [Operation] = [
        .lookup(parent: 1, name: FileName("a")), .getattr(2), .readlink(3), .read(4, handle: 5, offset: 6, size: 7),
        .readdir(1, cookie: 9, maxBytes: 4096), .statfs, .getxattr(2, name: FileName("user.x"), size: 0),
        .listxattr(2, size: 10), .fsync(2),
        .setattr(2, AttributeChanges(mode: 0o644, uid: 1, gid: 2, size: 3, atime: .now,
                                     mtime: .set(Timestamp(seconds: -5, nanoseconds: 9)), ctime: Timestamp(seconds: 1, nanoseconds: 2)), caller),
        .setattr(2, AttributeChanges(), caller),
        .mknod(parent: 1, name: FileName("p"), mode: Mode.fifo | 0o600, rdev: 77, caller),
        .mkdir(parent: 1, name: FileName([0xFF, 0xFE]), mode: 0o755, caller),
        .symlink(parent: 1, name: FileName("l"), target: Array("t".utf8), caller),
        .link(2, newParent: 1, newName: FileName("b")), .unlink(parent: 1, name: FileName("b")),
        .rmdir(parent: 1, name: FileName("d")),
        .rename(parent: 1, name: FileName("a"), newParent: 3, newName: FileName("b"), flags: RenameFlags.exchange),
        .create(parent: 1, name: FileName("c"), mode: 0o644, flags: OpenFlags.readWrite, caller),
        .open(2, flags: OpenFlags.append), .release(2, handle: 8),
        .write(2, handle: 8, offset: 1 << 40, data: Array(0..<255)),
        .setxattr(2, name: FileName("user.k"), value: [1, 2, 3], flags: XattrFlags.create),
        .removexattr(2, name: FileName("user.k")), .forget(9),
        .getLock(2, LockTable.Request(owner: LockTable.Owner(session: 3, owner: 4), family: .fcntl, kind: .exclusive,
                                      range: LockTable.Range(start: 10, end: 19), pid: 77)),
        .setLock(2, LockTable.Request(owner: LockTable.Owner(session: 3, owner: 4), family: .flock, kind: nil,
                                      range: .wholeFile, pid: 77), wait: true),
        .releaseLocks(2, owner: LockTable.Owner(session: 3, owner: .max), family: .fcntl), .expireSessionLocks(session: 9),
    ]

    static let attributes = FileAttributes(inode: 5, generation: 1, mode: Mode.regular | 0o644, linkCount: 1, uid: 1, gid: 2,
                                           rdev: 0, size: 99, atime: .zero, mtime: Timestamp(seconds: 1, nanoseconds: 2),
                                           ctime: Timestamp(seconds: 3, nanoseconds: 4))
    static let replies: [Reply] = [
        .error(.ENOENT), .done, .entry(attributes), .attributes(attributes), .created(attributes, handle: 3),
        .opened(handle: 4), .written(count: 4096), .bytes([1, 2, 3]), .size(12),
        .directory([DirectoryEntry(name: FileName("x"), inode: 9, mode: Mode.directory, cookie: 3)]),
        .lock(nil), .lock(LockTable.Lock(owner: LockTable.Owner(session: 1, owner: 2), family: .fcntl, kind: .shared,
                                         range: LockTable.Range(start: 0, end: .max), pid: 42)),
        .statfs(FileSystemStatistics(blockSize: 4096, totalBlocks: 1, freeBlocks: 2, availableBlocks: 3, totalInodes: 4,
                                     freeInodes: 5, maxNameLength: 255)),
    ]

    /// The agent's commands to its server: each round-trips; anything else is refused.
    func testServerControlRoundTripsAndRefusesWhatIsNotACommand() throws {
        for command in [ServerControl.promote(alone: false), .promote(alone: true), .continueWithoutStandby, .handOver, .pathRestored,
                        .answerAlone(oldestWaiting: 77)] {
            let frame = command.frame()
            XCTAssertEqual(Int(frame[0]), frame.count - 4, "\(command): the length prefix")
            XCTAssertLessThanOrEqual(frame.count - 4, ServerControl.maxFrameBytes)
            XCTAssertEqual(try Array(frame.dropFirst(4)).withUnsafeBytes { try ServerControl.decode($0) }, command)
        }
        for bad: [UInt8] in [[], [0], [9], [3, 0], [1]] {
            XCTAssertThrowsError(try bad.withUnsafeBytes { try ServerControl.decode($0) }, "\(bad) was taken for a command")
        }
    }

    /// The server's reports to its agent: each round-trips; anything else is refused.
    func testServerReportRoundTripsAndRefusesWhatIsNotAReport() throws {
        let clients = HostAndPort(host: "198.18.1.1", port: 7000)
        let reports: [ServerReport] = [
            .waitingForPromotion(clients: clients), .firstClientWelcomed,
            .listening(clients: clients, monitor: nil, metrics: nil),
            .listening(clients: HostAndPort(host: "::1", port: 1), monitor: clients, metrics: HostAndPort(host: "127.0.0.1", port: 9)),
        ]
        for report in reports {
            let frame = report.frame()
            XCTAssertEqual(Int(frame[0]) | Int(frame[1]) << 8, frame.count - 4, "\(report): the length prefix")
            XCTAssertLessThanOrEqual(frame.count - 4, ServerReport.maxFrameBytes)
            XCTAssertEqual(try Array(frame.dropFirst(4)).withUnsafeBytes { try ServerReport.decode($0) }, report)
        }
        XCTAssertEqual(ServerReport.listening(clients: clients, monitor: nil, metrics: clients).listeningLine,
                       "listening 198.18.1.1:7000 metrics 198.18.1.1:7000")
        let notAnAddress = ServerReport.waitingForPromotion(clients: clients).frame().dropFirst(4).map { $0 == UInt8(ascii: ":") ? UInt8(ascii: "x") : $0 }
        for bad: [UInt8] in [[], [0], [9], [3, 0], [1], [1, 0, 0, 0, 0], notAnAddress, Array("listening 1.2.3.4:5".utf8)] {
            XCTAssertThrowsError(try bad.withUnsafeBytes { try ServerReport.decode($0) }, "\(bad) was taken for a report")
        }
    }

    func testEveryMessageRoundTrips() throws {
        var messages: [Message] = [
            .hello(export: "projects", session: 42, version: Message.protocolVersion), .welcome(epoch: 3),
            .refused(.notActive, detail: "standby"),
            .exportAddresses([HostAndPort(host: "198.18.1.1", port: 7000), HostAndPort(host: "::1", port: 7000)], multipath: true), .exportAddresses([], multipath: false),
            .heartbeat(epoch: 3, sequence: 9), .heartbeat(epoch: 3, sequence: 9, alone: true),
            .lockLease(milliseconds: 30_000), .leaseRenewal, .locksAsked, .locksAnswer(json: "{}"),
            .probe(key: [UInt8](repeating: 7, count: ChallengeMAC.keyBytes)),
            .agentRequest(.status), .agentRequest(.fence(export: "projects", epoch: 4)), .agentRequest(.migrate(export: "projects")),
            .agentRequest(.handOver(export: "projects", epoch: 4)), .agentRequest(.forceServe(export: "projects")),
            .agentRequest(.outdate(export: "projects", epoch: 9)),
        ]
        messages += Self.operations.enumerated().map { .request(sequence: UInt64($0.offset), oldestUnanswered: 1, $0.element) }
        messages += Self.operations.map { .request(sequence: 5, oldestUnanswered: 2, $0, caller: Credentials(uid: 1000, gid: 100)) }
        messages += Self.replies.map { .reply(sequence: 9, epoch: 2, $0) }
        for message in messages {
            let frame = message.frame()
            XCTAssertEqual(Int(frame[0]) | Int(frame[1]) << 8 | Int(frame[2]) << 16, frame.count - 4)
            let decoded = try Array(frame.dropFirst(4)).withUnsafeBytes { try Message.decode($0) }
            XCTAssertEqual(decoded, message)
        }
    }

    /// A heartbeat of a server from before `alone` (no byte for it) is not alone;
    /// anything after that byte is still an error.
    func testAHeartbeatWithoutTheAloneByteIsNotAlone() throws {
        let alone = Array(Message.heartbeat(epoch: 3, sequence: 9, alone: true).frame().dropFirst(4))
        let old = Array(alone.dropLast())
        XCTAssertEqual(try old.withUnsafeBytes { try Message.decode($0) }, .heartbeat(epoch: 3, sequence: 9, alone: false))
        XCTAssertThrowsError(try (alone + [0]).withUnsafeBytes { try Message.decode($0) })
    }

    func testTruncatedMessagesAreErrorsNotCrashes() {
        for operation in Self.operations {
            let body = Array(Message.request(sequence: 1, oldestUnanswered: 1, operation).frame().dropFirst(4))
            for cut in 0..<body.count {
                XCTAssertThrowsError(try Array(body.prefix(cut)).withUnsafeBytes { try Message.decode($0) })
            }
            XCTAssertThrowsError(try (body + [0]).withUnsafeBytes { try Message.decode($0) }, "trailing bytes accepted")
        }
    }

    func testRandomBytesNeverCrashTheDecoder() {
        var generator = SplitMix64(seed: 0xBA70)
        for _ in 0..<20_000 {
            let count = Int(generator.next() % 64)
            var bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            if !bytes.isEmpty { bytes[0] = UInt8(generator.next() % 6) }
            _ = try? bytes.withUnsafeBytes { try Message.decode($0) }
        }
    }

    /// Issue 13: a probe key of another length reached a precondition in
    /// the challenge's MAC and stopped the server; the decoder refuses it.
    func testAProbeKeyOfAnotherLengthIsRefusedByTheDecoder() {
        for length in [0, 1, ChallengeMAC.keyBytes - 1, ChallengeMAC.keyBytes + 1, 64] {
            let body = Array(Message.probe(key: [UInt8](repeating: 1, count: length)).frame().dropFirst(4))
            XCTAssertThrowsError(try body.withUnsafeBytes { try Message.decode($0) }, "a \(length)-byte probe key was accepted")
        }
    }

    /// Found by the message fuzzer: a hello whose export name was not UTF-8
    /// decoded to another name (bad bytes replaced); it is refused now.
    func testAStringThatIsNotUTF8IsRefused() {
        var w = ByteWriter()
        w.write(Message.Tag.hello.rawValue)
        w.write(bytes: [0x64, 0xE2, 0x28, 0xA1])
        w.write(UInt64(1)); w.write(Message.protocolVersion)
        XCTAssertThrowsError(try w.bytes.withUnsafeBytes { try Message.decode($0) })
    }

    /// A list of export addresses longer than the limit, or one that is not HOST:PORT, is refused.
    func testABadExportAddressListIsRefused() {
        var long = ByteWriter()
        long.write(Message.Tag.exportAddresses.rawValue)
        long.write(UInt32(Message.maxExportAddresses + 1))
        for _ in 0...Message.maxExportAddresses { long.write("198.18.1.1:7000") }
        XCTAssertThrowsError(try long.bytes.withUnsafeBytes { try Message.decode($0) })
        var bad = ByteWriter()
        bad.write(Message.Tag.exportAddresses.rawValue)
        bad.write(UInt32(1))
        bad.write("no port here")
        bad.write(true)
        XCTAssertThrowsError(try bad.bytes.withUnsafeBytes { try Message.decode($0) })
    }

    func testOversizedFieldsAreRefused() {
        var w = ByteWriter()
        w.write(UInt8(4)) // request
        w.write(UInt64(1)); w.write(UInt64(1))
        w.write(UInt8(31)) // write
        w.write(UInt64(2)); w.write(UInt64(1)); w.write(UInt64(0))
        w.write(UInt32(WireLimits.maxDataBytes + 1))
        XCTAssertThrowsError(try w.bytes.withUnsafeBytes { try Message.decode($0) }) { error in
            guard case DecodeError.tooLarge = error else { return XCTFail("\(error)") }
        }
    }

    func testCRC32CKnownValue() {
        // The standard check value of CRC-32C.
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        let long = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let split = CRC32C.checksum(Array(long[500...]), continuing: CRC32C.checksum(Array(long[..<500])))
        XCTAssertEqual(split, CRC32C.checksum(long))
    }

    private func segment(_ count: Int) -> ([JournalRecord], [UInt8]) {
        let records = (1...count).map {
            JournalRecord(sequence: UInt64($0), epoch: 1, time: Timestamp(seconds: Int64($0), nanoseconds: 0), session: 3,
                          requestSequence: UInt64($0), operation: Self.operations[$0 % Self.operations.count])
        }
        // As a segment holds them: each record says the ones before it were made durable.
        var bytes: [UInt8] = []
        for record in records { bytes += JournalCodec.encode(record, durableThrough: UInt64(bytes.count)) }
        return (records, bytes)
    }

    func testJournalScanReadsEveryRecord() {
        let (records, bytes) = segment(40)
        let scan = JournalCodec.scan(bytes)
        XCTAssertEqual(scan.records, records)
        XCTAssertEqual(scan.ending, .clean)
        XCTAssertEqual(scan.validBytes, bytes.count)
    }

    /// A record cut short at any byte is a torn tail: dropped, never an error.
    func testTornTailIsDetectedAtEveryCut() {
        let (records, bytes) = segment(3)
        let lastStart = bytes.count - JournalCodec.encode(records[2], durableThrough: 0).count
        for cut in lastStart..<bytes.count {
            let scan = JournalCodec.scan(Array(bytes.prefix(cut)))
            XCTAssertEqual(scan.records, Array(records.prefix(2)))
            XCTAssertEqual(scan.validBytes, lastStart)
            if cut > lastStart { XCTAssertEqual(scan.ending, .tornTail(offset: lastStart)) }
        }
        // A torn record followed by the zeros of a preallocated segment.
        let torn = JournalCodec.scan(Array(bytes.prefix(lastStart + 20)) + [UInt8](repeating: 0, count: 4096))
        XCTAssertEqual(torn.ending, .tornTail(offset: lastStart))
        XCTAssertEqual(torn.records, Array(records.prefix(2)))
    }

    /// The unwritten rest of a preallocated segment is zeros: a clean end.
    func testZerosAfterTheLastRecordAreACleanEnd() {
        let (records, bytes) = segment(3)
        let scan = JournalCodec.scan(bytes + [UInt8](repeating: 0, count: 8192))
        XCTAssertEqual(scan.ending, .clean)
        XCTAssertEqual(scan.records, records)
        XCTAssertEqual(scan.validBytes, bytes.count)
    }

    /// A damaged record that a later record says was durable is corruption: reported with its offset.
    func testCorruptRecordInTheMiddleIsReported() {
        let (records, bytes) = segment(5)
        let secondStart = JournalCodec.encode(records[0], durableThrough: 0).count
        var damaged = bytes
        damaged[secondStart + JournalCodec.headerBytes + 3] ^= 0x40
        let scan = JournalCodec.scan(damaged)
        XCTAssertEqual(scan.records, [records[0]])
        guard case .corrupt(let offset, _) = scan.ending else { return XCTFail("\(scan.ending)") }
        XCTAssertEqual(offset, secondStart)
    }

    /// Pages written after the last sync may reach the disk in any order
    /// (a power cut): a bad record with valid records after it that claim
    /// no durability past it is the journal's unsynced end, dropped. A scan
    /// that began later in the segment counts claims from the segment's start.
    func testRecordsAfterTheLastSyncInAnyOrderAreATornTail() {
        let records = segment(5).0
        var bytes: [UInt8] = []
        let third = starts(records)[2]
        for (index, record) in records.enumerated() {
            // Synced once, after the second record.
            bytes += JournalCodec.encode(record, durableThrough: index < 2 ? 0 : UInt64(third))
        }
        var lost = bytes
        // The third record's page never reached the disk; the fourth and fifth did.
        for index in third..<third + 20 { lost[index] = 0 }
        let scan = JournalCodec.scan(lost, afterPowerCut: true)
        XCTAssertEqual(scan.records, Array(records.prefix(2)))
        XCTAssertEqual(scan.ending, .tornTail(offset: third))
        // In the same boot every page is there: the same bytes are damage.
        guard case .corrupt = JournalCodec.scan(lost).ending else { return XCTFail("damage in the same boot not reported") }
        // The second record damaged, after the sync that covered it: the third says so.
        var damaged = bytes
        damaged[starts(records)[1] + JournalCodec.headerBytes + 3] ^= 0x40
        guard case .corrupt(let offset, _) = JournalCodec.scan(damaged, afterPowerCut: true).ending else {
            return XCTFail("damage after a sync not reported")
        }
        XCTAssertEqual(offset, starts(records)[1])
        // Read from the second record on, as a warm start does: the same verdict.
        let fromSecond = Array(damaged[starts(records)[1]...])
        guard case .corrupt = JournalCodec.scan(fromSecond, segmentOffset: starts(records)[1], afterPowerCut: true).ending else {
            return XCTFail("a scan from within the segment missed the claim")
        }
    }

    private func starts(_ records: [JournalRecord]) -> [Int] {
        var offsets: [Int] = []
        var end = 0
        for record in records {
            offsets.append(end)
            end += JournalCodec.encode(record, durableThrough: 0).count
        }
        return offsets
    }
}
