// Goal: a power cut loses nothing that a `sync()` (what fsync, fdatasync and
// syncfs mean) acknowledged, and an export always opens after one, serving
// no data a file does not have (DESIGN.md §4.1). In the style of ALICE,
// CrashMonkey and dm-log-writes.
//
// Method: a seeded workload runs against a real ExportStore in this process
// (creates, immediate and indirect writes, truncations, renames, unlinks,
// syncs; small limits, so the journal rolls over several segments and
// checkpoints), while `Disk.recorder` records every change it makes to the
// data directory at the system call seam. The recorded changes are replayed
// into a model of the disk (CrashKit.swift) that knows, at each crash point
// (before operation i), what is durable and what is not; a crash state is
// the durable part plus a subset of the rest, written into a fresh directory
// with a `boot` file of another boot (the page cache is gone, so replay
// writes immediate data again, as after a real reboot). An ExportStore opens
// on it and is checked against a model of the namespace at each sequence:
// it opens; its sequence s is at least a, the last one a sync had
// acknowledged before the crash point; its names, inode numbers and sizes
// are those of sequence s; each byte of each file holds a value the byte had
// at some sequence from a to s (bytes past a file's size count as zeros), so
// acknowledged data is there and nothing of another file or of garbage is.
//
// The disk model, conservative as POSIX is, with what ext4 (data=ordered)
// adds where POSIX says nothing:
// - fdatasync/fsync of a file makes its data and size durable (writes into
//   a preallocated region too); nothing else does.
// - Until then the kernel may have written back the file's dirty 4 KiB
//   pages as they were at some moment since the sync, the next write torn
//   at a page boundary, and its size (ftruncate, fallocate, appends) as it
//   was at any such moment. BATON_CRASH_PAGE_ORDER=any lets each page be
//   from any moment, independently (pages reaching the disk out of order):
//   the journal does not survive that yet (README, Power loss).
// - fsync of a directory makes its entries durable. Until then each
//   creation, unlink, mkdir and rename in it may or may not have happened; a
//   rename moves its file atomically (old name or new, never neither) and
//   is durable once its destination directory is synced. A new file needs
//   a sync of its directory to exist after a crash.
// - The data directory itself exists before the run.
// Not modelled: torn sectors inside a page, a disk that lies about flushes.
//
// The run is bounded for CI (states and seconds); a longer run by hand:
//   BATON_CRASH_STATES=20000 BATON_CRASH_SECONDS=0 swift test --filter CrashStateTests
// (BATON_CRASH_SECONDS=0: no time cap). The seed is 1 unless BATON_CRASH_SEED
// says another (or "random", to explore), and
// BATON_CRASH_STATE=k checks state k only; a failing state prints both.
import BatonCore
@testable import BatonRuntime
import Foundation
import Logging
import XCTest

/// The namespace as the workload left it at one sequence: what a recovered
/// export must show.
struct NamespaceModel {
    var files: [String: InodeNumber] = [:]
    var directories: Set<String> = []
    var contents: [InodeNumber: [UInt8]] = [:]

    mutating func write(_ ino: InodeNumber, _ bytes: [UInt8], at offset: Int) {
        var content = contents[ino]!
        if content.count < offset + bytes.count { content += [UInt8](repeating: 0, count: offset + bytes.count - content.count) }
        content.replaceSubrange(offset..<offset + bytes.count, with: bytes)
        contents[ino] = content
    }

    mutating func resize(_ ino: InodeNumber, to size: Int) {
        var content = contents[ino]!
        if size < content.count { content.removeLast(content.count - size) } else { content += [UInt8](repeating: 0, count: size - content.count) }
        contents[ino] = content
    }
}

/// The seeded workload, run against a real store while the disk is recorded.
final class CrashWorkload {
    /// Few files per fsync each, so that both ways of syncing data files (an
    /// fsync each, one syncfs) come before crash points.
    static let limits = ExportStore.Limits(checkpointAfterBytes: 3 << 20, segmentBytes: 2 * WireLimits.maxFrameBytes,
                                           syncEachFileAtMost: 4)
    static let maxFileBytes = 512 * 1024

    let store: ExportStore
    private let log: DiskLog
    private var random: SeededRandom
    private var model = NamespaceModel()
    /// The namespace at each sequence, from 0 (a new export).
    private(set) var models: [NamespaceModel] = [NamespaceModel()]
    /// For each sequence, how many disk operations were recorded when its mutation returned.
    private(set) var recordedBy: [Int] = [0]
    /// Where each `sync()` returned (operations recorded by then) and the sequence it acknowledged.
    private(set) var acknowledged: [(operations: Int, sequence: UInt64)] = []
    private var handles: [InodeNumber: UInt64] = [:]
    private var request: UInt64 = 0
    private var names = 0

    init(directory: String, log: DiskLog, seed: UInt64, logger: Logger) throws {
        self.log = log
        random = SeededRandom(seed: seed)
        store = try ExportStore(directory: directory, exportName: "crash", limits: Self.limits, logger: logger)
    }

    /// Runs until the journal has rolled over to a new segment several times and checkpointed twice.
    func run() throws {
        try mutate(.mkdir(parent: rootInode, name: FileName("d"), mode: 0o755, .root))
        model.directories.insert("d")
        models[models.count - 1] = model
        while segmentsStarted < 7 || checkpoints < 2 {
            precondition(models.count < 5000, "the workload does not roll the journal over")
            try step()
        }
        try sync()
    }

    private var segmentsStarted: Int {
        // Created as a segment, or the spare segment renamed into one.
        log.operations.filter {
            switch $0 {
            case .open(let path, true, _): path.hasSuffix(".log")
            case .rename(_, let to): to.hasSuffix(".log")
            default: false
            }
        }.count
    }

    private var checkpoints: Int {
        log.operations.filter { if case .rename(_, let to) = $0 { to.hasSuffix("/checkpoint") } else { false } }.count
    }

    private func step() throws {
        let choice = Int.random(in: 0..<100, using: &random)
        guard let (path, ino) = model.files.sorted(by: { $0.key < $1.key }).randomElement(using: &random), choice >= 8 else {
            return try create()
        }
        let size = model.contents[ino]!.count
        switch choice {
        case ..<50: try write(ino, count: Int.random(in: 1...ExportStore.immediateWriteMaxBytes, using: &random), maxOffset: size)
        case ..<62: try write(ino, count: Int.random(in: ExportStore.immediateWriteMaxBytes + 1...200 * 1024, using: &random), maxOffset: size)
        case ..<70:
            let newSize = Int.random(in: 0...min(Self.maxFileBytes, size + 64 * 1024), using: &random)
            try mutate(.setattr(ino, AttributeChanges(size: UInt64(newSize)), .root))
            model.resize(ino, to: newSize)
        case ..<77:
            let (parent, name) = split(path)
            let newPath = fresh(inDirectory: Bool.random(using: &random))
            let (newParent, newName) = split(newPath)
            try mutate(.rename(parent: parent, name: name, newParent: newParent, newName: newName, flags: 0))
            model.files[newPath] = model.files.removeValue(forKey: path)
        case ..<82:
            try mutate(.release(ino, handle: handles.removeValue(forKey: ino)!))
            let (parent, name) = split(path)
            try mutate(.unlink(parent: parent, name: name))
            model.files.removeValue(forKey: path)
        default:
            try sync()
        }
        models[models.count - 1] = model
    }

    private func create() throws {
        let path = fresh(inDirectory: Bool.random(using: &random))
        let (parent, name) = split(path)
        guard case .created(let attributes, let handle) = try mutate(
            .create(parent: parent, name: name, mode: 0o644, flags: OpenFlags.readWrite, .root)) else {
            throw TestError("create \(path) failed")
        }
        handles[attributes.inode] = handle
        model.files[path] = attributes.inode
        model.contents[attributes.inode] = []
        models[models.count - 1] = model
    }

    private func write(_ ino: InodeNumber, count: Int, maxOffset: Int) throws {
        let offset = Int.random(in: 0...min(maxOffset, Self.maxFileBytes - count), using: &random)
        let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) }
        request += 1
        let before = store.appliedSequence
        let applied = try bytes.withUnsafeBytes {
            try store.applyWrite(ino, handle: handles[ino]!, offset: UInt64(offset), data: $0, session: 1, requestSequence: request)
        }
        guard applied.reply == .written(count: UInt32(count)), store.appliedSequence == before + 1 else {
            throw TestError("write of \(count) bytes at \(offset) to inode \(ino): \(applied.reply)")
        }
        model.write(ino, bytes, at: offset)
        models.append(model)
        recordedBy.append(log.count)
    }

    @discardableResult
    private func mutate(_ operation: BatonCore.Operation) throws -> Reply {
        request += 1
        let before = store.appliedSequence
        let reply = try store.apply(operation, session: 1, requestSequence: request).reply
        guard store.appliedSequence == before + 1, !{ if case .error = reply { true } else { false } }() else {
            throw TestError("\(operation) gave \(reply)")
        }
        models.append(model)
        recordedBy.append(log.count)
        return reply
    }

    private func sync() throws {
        try store.sync()
        acknowledged.append((log.count, store.appliedSequence))
    }

    private func fresh(inDirectory: Bool) -> String {
        names += 1
        return (inDirectory ? "d/" : "") + "f\(names)"
    }

    private func split(_ path: String) -> (InodeNumber, FileName) {
        let parts = path.split(separator: "/").map(String.init)
        let parent = parts.count == 2 ? lookup(rootInode, parts[0]) : rootInode
        return (parent, FileName(parts.last!))
    }

    private func lookup(_ parent: InodeNumber, _ name: String) -> InodeNumber {
        guard case .entry(let attributes) = store.withNamespace({ $0.query(.lookup(parent: parent, name: FileName(name))) }) else {
            preconditionFailure("\(name) not found")
        }
        return attributes.inode
    }
}

/// What an export opened on a crash state shows, checked against the models.
enum CrashCheck {
    /// `acknowledged`: the last sequence a sync acknowledged before the crash;
    /// `begun`: the last one whose mutation had begun (its data may be on disk without its record).
    static func check(_ directory: String, acknowledged: UInt64, begun: UInt64, models: [NamespaceModel], logger: Logger) -> String? {
        let store: ExportStore
        do {
            store = try ExportStore(directory: directory, exportName: "crash", limits: CrashWorkload.limits, logger: logger)
        } catch {
            return "the export does not open: \(error)"
        }
        let recovered = store.appliedSequence
        guard recovered >= acknowledged else {
            return "acknowledged records lost: the export opened at sequence \(recovered), a sync had acknowledged \(acknowledged)"
        }
        guard recovered <= begun else { return "the export opened at sequence \(recovered), which was never written before the crash" }
        let expected = models[Int(recovered)]
        var files: [String: (InodeNumber, UInt64)] = [:]
        var directories: Set<String> = []
        func walk(_ ino: InodeNumber, _ prefix: String) {
            var cookie: UInt64 = 0
            while case .directory(let entries) = store.withNamespace({ $0.query(.readdir(ino, cookie: cookie, maxBytes: 1 << 20)) }),
                  let last = entries.last {
                cookie = last.cookie
                for entry in entries where entry.name.bytes != [46] && entry.name.bytes != [46, 46] {
                    let path = prefix + entry.name.description
                    if Mode.isDirectory(entry.mode) {
                        directories.insert(path)
                        walk(entry.inode, path + "/")
                    } else {
                        files[path] = (entry.inode, store.withNamespace { $0.attributes(of: entry.inode)?.size ?? 0 })
                    }
                }
            }
        }
        walk(rootInode, "")
        guard directories == expected.directories, files.mapValues(\.0) == expected.files else {
            return "at sequence \(recovered) the namespace has files \(files.mapValues(\.0).sorted { $0.key < $1.key }) "
                + "and directories \(directories.sorted()), expected \(expected.files.sorted { $0.key < $1.key }) and \(expected.directories.sorted())"
        }
        for (path, (ino, size)) in files.sorted(by: { $0.key < $1.key }) {
            let want = expected.contents[ino]!
            guard size == UInt64(want.count) else { return "\(path) (inode \(ino)) has size \(size), expected \(want.count)" }
            var found = [UInt8](repeating: 0, count: want.count)
            do {
                _ = try found.withUnsafeMutableBytes { try store.read(ino, offset: 0, into: $0) }
            } catch {
                return "\(path) cannot be read: \(error)"
            }
            guard found != want else { continue }
            // A byte written after the acknowledged sequence may show any
            // value it had since, up to the write in flight at the crash.
            for offset in found.indices where found[offset] != want[offset] {
                let allowed = (Int(acknowledged)...Int(begun)).contains { sequence in
                    let content = models[sequence].contents[ino] ?? []
                    return (offset < content.count ? content[offset] : 0) == found[offset]
                }
                if !allowed {
                    return "\(path) (inode \(ino)) holds \(found[offset]) at offset \(offset), which it never held from "
                        + "sequence \(acknowledged) to \(begun); expected \(want[offset])"
                }
            }
        }
        return nil
    }
}

final class CrashStateTests: XCTestCase {
    private let logger: Logger = {
        var logger = Logger(label: "crash")
        logger.logLevel = .critical
        return logger
    }()

    private static func environment(_ name: String) -> UInt64? {
        ProcessInfo.processInfo.environment[name].flatMap { UInt64($0) }
    }

    func testPowerLossLosesNothingAcknowledged() throws {
        // A fixed seed by default, so that a run of the suite is repeatable;
        // BATON_CRASH_SEED=random explores (a failing seed is printed).
        let seed = ProcessInfo.processInfo.environment["BATON_CRASH_SEED"] == "random"
            ? UInt64.random(in: 1...UInt64(UInt32.max)) : Self.environment("BATON_CRASH_SEED") ?? 1
        let only = Self.environment("BATON_CRASH_STATE").map(Int.init)
        let budget = Int(Self.environment("BATON_CRASH_STATES") ?? 3000)
        let seconds = Self.environment("BATON_CRASH_SECONDS") ?? (ProcessInfo.processInfo.environment["BATON_CRASH_STATES"] == nil ? 60 : 0)
        // Random states alternate between pages in write order and in any
        // order; BATON_CRASH_PAGE_ORDER=any makes them all any order.
        let anyPageOrder = ProcessInfo.processInfo.environment["BATON_CRASH_PAGE_ORDER"] == "any"
        let root = try temporaryDirectory(self)
        let data = root + "/data"
        try Disk.makeDirectory(data)
        let log = DiskLog(root: data)
        let workload = try log.recording { () throws -> CrashWorkload in
            let workload = try CrashWorkload(directory: data, log: log, seed: seed, logger: logger)
            try workload.run()
            return workload
        }
        let operations = log.operations
        let points = operations.count + 1
        print("crash states: seed \(seed), \(operations.count) disk operations, \(workload.models.count - 1) records, "
              + "up to \(budget) states\(seconds > 0 ? " or \(seconds) s" : "")")
        let started = ContinuousClock.now
        var disk = CrashDisk(root: data)
        var applied = 0
        var checked = 0
        // First each point three times (synced only, everything, a random
        // subset), the points in `strides` ascending passes (0, 7, 14, …, then
        // 1, 8, …) so that a run cut short by its time budget still covers the
        // whole workload; then more random subsets, point by point.
        let strides = 7
        let firstRound = (0..<strides).flatMap { stride(from: $0, to: points, by: strides) }
        func crashPoint(_ state: Int) -> (point: Int, style: CrashStyle) {
            let random: (Int) -> CrashStyle = { anyPageOrder || $0 % 2 == 1 ? .random : .randomInWriteOrder }
            guard state >= 3 * points else {
                let (visit, kind) = state.quotientAndRemainder(dividingBy: 3)
                return (firstRound[visit], kind == 0 ? .syncedOnly : kind == 1 ? .everything : random(visit))
            }
            let (pass, point) = (state - 3 * points).quotientAndRemainder(dividingBy: points)
            return (point, random(pass))
        }
        for state in only.map({ [$0] }) ?? Array(0..<budget) {
            if seconds > 0, ContinuousClock.now - started > .seconds(seconds) { break }
            let (point, style) = crashPoint(state)
            if point < applied {
                disk = CrashDisk(root: data)
                applied = 0
            }
            for operation in operations[applied..<point] { disk.apply(operation) }
            applied = point
            var random = SeededRandom(seed: seed &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(state))
            let choice = disk.choose(style, using: &random)
            let acknowledged = workload.acknowledged.last(where: { $0.operations <= point })?.sequence ?? 0
            let begun = UInt64(workload.recordedBy.firstIndex(where: { $0 > point }) ?? workload.recordedBy.count - 1)
            let target = root + "/state"
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
            defer { try? FileManager.default.removeItem(atPath: target) }
            try disk.materialise(choice, into: target)
            // After a power cut the machine boots again: the page cache is gone.
            if FileManager.default.fileExists(atPath: target + "/boot") {
                try Data("the boot after the power cut".utf8).write(to: URL(fileURLWithPath: target + "/boot"))
            }
            checked += 1
            if let failure = CrashCheck.check(target, acknowledged: acknowledged, begun: begun, models: workload.models, logger: logger) {
                let next = point < operations.count ? operations[point].summary : "none (the run's end)"
                XCTFail("""
                    power cut state \(state) (seed \(seed)) fails: \(failure)
                    crash point: before disk operation \(point) of \(operations.count) (next: \(next)); \
                    acknowledged through sequence \(acknowledged); \(style):
                    \(disk.describe(choice))
                    replay: BATON_CRASH_SEED=\(seed) BATON_CRASH_STATE=\(state)\(anyPageOrder ? " BATON_CRASH_PAGE_ORDER=any" : "") swift test --filter CrashStateTests
                    """)
                break
            }
        }
        print("crash states: \(checked) checked in \(ContinuousClock.now - started) (seed \(seed))")
    }

    /// A standby acknowledges a catch-up copy once it is installed: a power
    /// cut right after must leave the copy, not the old replica or half of each.
    func testAnInstalledCatchUpCopyIsDurable() throws {
        for partial in [false, true] {
            let root = try temporaryDirectory(self, "copy\(partial)")
            // The server's export: a large (indirect) and a small write.
            let server = try ExportStore(directory: root + "/server", exportName: "crash", logger: logger)
            let file = try createFile(server, "a")
            try write(server, file, [UInt8](repeating: 0xA5, count: 200 * 1024), at: 0)
            try write(server, file, [UInt8](repeating: 0x5A, count: 100), at: 300 * 1024)
            // The data directory exists before the run (the store does not sync its parent: README, Power loss).
            let node = root + "/node/data"
            try FileManager.default.createDirectory(atPath: node, withIntermediateDirectories: true)
            let log = DiskLog(root: node)
            try log.recording {
                // The standby's replica, one record behind and with other data.
                let replica = try ExportStore(directory: node, exportName: "crash", logger: logger)
                try write(replica, try createFile(replica, "a"), [UInt8](repeating: 1, count: 4096), at: 0)
                try replica.sync()
                // The copy arrives as the agent writes it (NodeAgent, snapshotData).
                let incoming = node + "/incoming"
                try Disk.makeDirectory(incoming)
                try Disk.makeDirectory(incoming + "/files")
                var contents = [UInt8](repeating: 0, count: 300 * 1024 + 100)
                _ = try contents.withUnsafeMutableBytes { try server.read(file, offset: 0, into: $0) }
                try OpenFile(path: incoming + "/files/" + String(file, radix: 16), flags: O_WRONLY | O_CREAT).write(contents, at: 0)
                try OpenFile(path: incoming + "/checkpoint", flags: O_WRONLY | O_CREAT).write(server.withNamespace { $0.checkpoint() }, at: 0)
                try CatchUpCopy.install(from: incoming, into: node, partial: partial, epoch: 2)
            }
            // The power cut right after: only what was synced is there.
            var disk = CrashDisk(root: node)
            for operation in log.operations { disk.apply(operation) }
            var random = SeededRandom(seed: 1)
            let target = root + "/state"
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
            let choice = disk.choose(.syncedOnly, using: &random)
            try disk.materialise(choice, into: target)
            try Data("the boot after the power cut".utf8).write(to: URL(fileURLWithPath: target + "/boot"))
            let store = try ExportStore(directory: target, exportName: "crash", logger: logger)
            let kind = partial ? "partial" : "full"
            XCTAssertEqual(store.epoch, 2, "\(kind) copy: the epoch it was installed at")
            XCTAssertEqual(store.appliedSequence, server.appliedSequence, "\(kind) copy: the copy's checkpoint\n\(disk.describe(choice))")
            var found = [UInt8](repeating: 0xEE, count: 300 * 1024 + 100)
            var expected = found
            _ = try found.withUnsafeMutableBytes { try store.read(file, offset: 0, into: $0) }
            _ = try expected.withUnsafeMutableBytes { try server.read(file, offset: 0, into: $0) }
            XCTAssertTrue(found == expected, "\(kind) copy: the file's data\n\(disk.describe(choice))")
        }
    }

    private func createFile(_ store: ExportStore, _ name: String) throws -> InodeNumber {
        guard case .created(let attributes, _) = try store.apply(
            .create(parent: rootInode, name: FileName(name), mode: 0o644, flags: OpenFlags.readWrite, .root),
            session: 1, requestSequence: 1).reply else { throw TestError("create \(name)") }
        return attributes.inode
    }

    private func write(_ store: ExportStore, _ ino: InodeNumber, _ bytes: [UInt8], at offset: UInt64) throws {
        let reply = try bytes.withUnsafeBytes {
            try store.applyWrite(ino, handle: 1, offset: offset, data: $0, session: 1, requestSequence: UInt64.random(in: 2...UInt64.max))
        }.reply
        guard reply == .written(count: UInt32(bytes.count)) else { throw TestError("write: \(reply)") }
    }
}
