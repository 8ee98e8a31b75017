#if canImport(Glibc)
import Glibc
#endif
import BatonCore
import Dispatch
import CLinuxExtras
import Logging
import Synchronization

/// Why an export's data directory cannot be served. Each names the file and
/// what to do, for the admin who reads it.
public enum StoreError: Error, CustomStringConvertible, Sendable {
    case system(SystemCallError)
    case corruptJournal(file: String, offset: Int, reason: String)
    case corruptCheckpoint(file: String, reason: String)
    case wrongExport(directory: String, holds: String, asked: String)
    /// A journal write failed after the mutation was applied in memory: the
    /// server must stop so that a restart replays the journal as it is on disk.
    case journalWriteFailed(SystemCallError)
    /// Another process has the data directory open (DESIGN.md §4.7: one owner).
    case inUse(directory: String, pid: Int32?)
    /// The store gave its directory up (`close`) and takes no more mutations.
    case closed(directory: String)

    /// Wraps what the disk threw; a StoreError passes through.
    init(_ error: any Error) {
        switch error {
        case let error as StoreError: self = error
        case let error as SystemCallError: self = .system(error)
        default: preconditionFailure("unexpected error \(error)")
        }
    }

    /// The journal or checkpoint is damaged (the copy cannot be opened as it is).
    public var isDamage: Bool {
        switch self {
        case .corruptJournal, .corruptCheckpoint: true
        default: false
        }
    }

    public var description: String {
        switch self {
        case .system(let error): "\(error)"
        case .corruptJournal(let file, let offset, let reason):
            "journal \(file) is damaged at offset \(offset) (\(reason)); records after it may hold acknowledged data, so the export is not served. Restore the data directory from the standby or a backup."
        case .corruptCheckpoint(let file, let reason):
            "checkpoint \(file) is unreadable (\(reason)); the export is not served. Restore the data directory from the standby or a backup."
        case .wrongExport(let directory, let holds, let asked):
            "data directory \(directory) holds export '\(holds)', not '\(asked)'; use a directory of its own for each export"
        case .journalWriteFailed(let error):
            "journal write failed (\(error)); the server stops so that a restart replays what is on disk"
        case .inUse(let directory, let pid):
            "data directory \(directory) is open in process \(pid.map(String.init) ?? "(PID not yet written to \(DataDirectoryLock.path(in: directory)))"); "
                + "one process at a time may open it. A 'baton serve' left running by an agent that died is fenced by this node's agent "
                + "when it starts; any other process: see /proc/PID/cmdline, stop it, then retry"
        case .closed(let directory):
            "data directory \(directory) was given up to another process; this store takes no more mutations"
        }
    }
}

/// An export's data directory: the journal, the checkpoint and the file data
/// of one export on one node, and the namespace rebuilt from them.
///
///     DIR/export          the export's name (a directory serves one export)
///     DIR/epoch           the epoch this node last served or accepted
///     DIR/checkpoint      the namespace at some journal sequence
///     DIR/journal/N.log   records from sequence N on, in preallocated segments
///     DIR/files/INO       the contents of regular file INO
///     DIR/files-unverified  after a reboot: the data files may lack writes
///                         the page cache held; as a standby, a full copy
///     DIR/lock            held (flock) by the one process that has it open;
///                         its PID as text (see `DataDirectoryLock`)
///
/// Mutations come one at a time (the server serializes them); queries and reads may
/// come from any thread and see the namespace under a read lock.
public final class ExportStore: @unchecked Sendable {
    public struct Limits: Sendable {
        /// Journal bytes after which a checkpoint is taken and older segments are deleted.
        public var checkpointAfterBytes: Int
        /// Size of each preallocated journal segment: appends inside it cannot
        /// run out of space, and a full disk is found before a mutation, not after.
        public var segmentBytes: Int
        /// Past this many files to make durable, one syncfs instead of an
        /// fsync each: a journal commit per file made a checkpoint after
        /// 100,000 small files take 11.7 s (0.5 s with syncfs).
        public var syncEachFileAtMost: Int
        public init(checkpointAfterBytes: Int = 64 << 20, segmentBytes: Int = 32 << 20, syncEachFileAtMost: Int = 64) {
            self.checkpointAfterBytes = checkpointAfterBytes
            self.segmentBytes = segmentBytes
            self.syncEachFileAtMost = syncEachFileAtMost
        }
    }

    /// Room kept free in a segment for the largest record.
    static let maxRecordBytes = WireLimits.maxFrameBytes
    /// Writes up to this size carry their data in the journal ("immediate"):
    /// an fsync then needs one disk flush, the journal's. Larger writes go to
    /// the data file only ("indirect", as ZFS's intent log does it): data
    /// reaches the disk once, and an fsync flushes the data file too.
    static let immediateWriteMaxBytes = 64 * 1024
    /// Bounds the bookkeeping of immediate writes: past it, a checkpoint.
    static let maxImmediateRanges = 1 << 16

    public let directory: String
    public let exportName: String
    public private(set) var epoch: UInt64
    private var namespace: Namespace
    private let lock = ReadWriteLock()
    private let limits: Limits
    private let logger: Logger
    private let files: DataFiles
    private var segment: OpenFile
    private var segmentOffset = 0
    /// How far the current segment has been made durable (fdatasync'd) by
    /// this process; each record says so (`JournalCodec`). 0 after open: what
    /// was replayed may still be only in the page cache.
    private var segmentDurableOffset = 0
    /// Written under the mutation lock; atomic so that metrics read it from any thread.
    private let journalBytesCount = Atomic<Int>(0)
    private var journalBytesSinceCheckpoint: Int {
        get { journalBytesCount.load(ordering: .relaxed) }
        set { journalBytesCount.store(newValue, ordering: .relaxed) }
    }
    /// Journal bytes since the last checkpoint (what a restart replays).
    public var journalBytes: Int { journalBytesSinceCheckpoint }
    /// When the checkpoint was last written (seconds since 1970; 0: never).
    private let checkpointWrittenAt = Atomic<Int>(0)
    public var checkpointWrittenSeconds: Int {
        if checkpointWrittenAt.load(ordering: .relaxed) == 0 {
            // A checkpoint of an earlier process: the file's time.
            var info = stat()
            if stat(checkpointPath, &info) == 0 { checkpointWrittenAt.store(info.st_mtim.tv_sec, ordering: .relaxed) }
        }
        return checkpointWrittenAt.load(ordering: .relaxed)
    }
    /// Where each file was written by immediate writes since the checkpoint.
    /// Replay re-applies those writes; a later write that overlaps one must be
    /// immediate too, or replay would put older data over it.
    private var immediateRanges: [InodeNumber: ByteRanges] = [:]
    private var immediateRangeCount = 0
    /// A data file may hold a change no record has (a write or a size change
    /// whose record failed): the next open must reconcile the data files
    /// with the namespace even from a warm checkpoint of this process.
    private var dataFilesMayDiffer = false
    /// The epochs of the records since the checkpoint, and the last record
    /// after `touchesKnownFrom` that changed each file's data: what a
    /// returning standby's catch-up needs to copy only what differs.
    private var history = JournalHistory(checkpoint: 0, epoch: 0)
    private var lastTouched: [InodeNumber: UInt64] = [:]
    private var touchesKnownFrom: UInt64 = 0
    /// Held from the open until `close` or the end of the process.
    private let ownership: DataDirectoryLock
    private var closed = false

    private var journalDirectory: String { directory + "/journal" }
    private var checkpointPath: String { directory + "/checkpoint" }
    private var unverifiedPath: String { directory + "/files-unverified" }

    /// Opens (or creates) the data directory and replays checkpoint and journal.
    public init(directory: String, exportName: String, limits: Limits = Limits(), logger: Logger) throws(StoreError) {
        self.directory = directory
        self.exportName = exportName
        self.limits = limits
        self.logger = logger
        precondition(limits.segmentBytes >= 2 * Self.maxRecordBytes, "journal segments must hold the largest record")
        openStarted = ContinuousClock.now
        do {
            if try Disk.makeDirectory(directory) {
                // A new data directory outlives a power cut only once its parent's entry is durable.
                let parent = directory.lastIndex(of: "/").map { String(directory[..<$0]) } ?? "."
                try Disk.syncDirectory(parent.isEmpty ? "/" : parent)
            }
            // Before anything is read: a second owner would replay a journal the first still writes.
            ownership = try DataDirectoryLock(directory: directory)
            try Disk.makeDirectory(directory + "/journal")
            try Disk.makeDirectory(directory + "/files")
            let namePath = directory + "/export"
            if Disk.exists(namePath) {
                let holds = String(decoding: try OpenFile(path: namePath, flags: O_RDONLY).readAll(), as: UTF8.self)
                guard holds == exportName else { throw StoreError.wrongExport(directory: directory, holds: holds, asked: exportName) }
            } else {
                try Disk.writeAtomically(Array(exportName.utf8), to: namePath, directory: directory)
            }
            let epochPath = directory + "/epoch"
            if Disk.exists(epochPath) {
                let text = String(decoding: try OpenFile(path: epochPath, flags: O_RDONLY).readAll(), as: UTF8.self)
                guard let value = UInt64(text.trimmingSuffixNewline()) else {
                    throw StoreError.corruptCheckpoint(file: epochPath, reason: "not a number: \(text)")
                }
                epoch = value
            } else {
                epoch = 1
                try Disk.writeAtomically(Array("1\n".utf8), to: epochPath, directory: directory)
            }
            files = DataFiles(directory: directory + "/files", syncEachFileAtMost: limits.syncEachFileAtMost)
            let path = directory + "/checkpoint"
            if Disk.exists(path) {
                do {
                    namespace = try Namespace(checkpoint: try OpenFile(path: path, flags: O_RDONLY).readAll())
                } catch let error as DecodeError {
                    throw StoreError.corruptCheckpoint(file: path, reason: error.description)
                }
            } else {
                guard try Disk.list(directory + "/journal").isEmpty else {
                    throw StoreError.corruptCheckpoint(file: path, reason: "missing while journal segments exist")
                }
                // A new export: its root's times are fixed here, once, in the
                // first checkpoint, so every replay on every node agrees.
                namespace = Namespace(createdAt: .now())
                try Disk.writeAtomically(namespace.checkpoint(), to: path, directory: directory)
            }
            segment = try OpenFile(path: "/dev/null", flags: O_WRONLY)
            // After a crash a data file may be longer than its size (a write
            // without its record) or have no inode (a removal not carried out).
            // Opening every file costs 0.3 s per 100,000: skipped when a
            // warm checkpoint vouches for them (a promotion in the same boot).
            if try !replayJournal() {
                try files.reconcile(with: namespace, logger: logger, exportName: exportName)
            }
            _ = prepareSpareSegment()
        } catch {
            throw StoreError(error)
        }
    }

    /// Reads the written part of a preallocated segment: a growing prefix
    /// until the records end in zeros with room for a whole record after them
    /// (a damaged header followed by records would show within that room).
    static func readUsedPart(of file: OpenFile, from start: Int = 0, afterPowerCut: Bool) throws -> ([UInt8], JournalCodec.Scan) {
        let size = max(0, Int(try file.size()) - start)
        var count = min(size, 4 << 20)
        while true {
            var bytes = [UInt8](repeating: 0, count: count)
            let read = try bytes.withUnsafeMutableBytes { try file.read(into: $0, at: UInt64(start)) }
            bytes.removeLast(count - read)
            let scan = JournalCodec.scan(bytes, segmentOffset: start, afterPowerCut: afterPowerCut)
            let roomAfter = bytes.count - scan.validBytes
            if bytes.count >= size || (scan.ending == .clean && roomAfter >= maxRecordBytes + JournalCodec.headerBytes) {
                return (bytes, scan)
            }
            count = min(size, count * 4)
        }
    }

    /// The machine's boot, and the one in which the data files were last
    /// written: in the same boot the page cache holds every write that was
    /// made before its record, and replay need not write data again.
    private func boots() -> (current: [UInt8], recorded: [UInt8]) {
        let current = (try? OpenFile(path: "/proc/sys/kernel/random/boot_id", flags: O_RDONLY).readAll()) ?? []
        let recorded = (try? OpenFile(path: directory + "/boot", flags: O_RDONLY).readAll()) ?? []
        return (current, recorded)
    }

    /// Returns whether the data files are known to match the namespace: it
    /// started from a warm checkpoint of this boot, written when they did,
    /// and its journal position held.
    private func replayJournal() throws -> Bool {
        let (currentBoot, recordedBoot) = boots()
        let sameBoot = !currentBoot.isEmpty && currentBoot == recordedBoot
        // Records up to the warm checkpoint are read only for where their immediate writes landed.
        var warm = sameBoot ? takeWarmCheckpoint(currentBoot: currentBoot) : nil
        let started = namespace.appliedSequence
        let segments = try journalSegmentsAfterCheckpoint()
        history = JournalHistory(checkpoint: namespace.appliedSequence, epoch: namespace.appliedEpoch)
        touchesKnownFrom = namespace.appliedSequence
        // With its replay state, the journal is read from where the warm checkpoint ends.
        var resume: (index: Int, offset: Int)?
        var dataFilesMatch = false
        var vouchedSequence: UInt64?
        if let (_, state) = warm, state == nil {
            logger.info("warm checkpoint without a usable journal position: reading the journal from the checkpoint",
                        metadata: ["export": "\(exportName)"])
        }
        if case let (namespaceThen, state?)? = warm {
            let index = segments.firstIndex(of: state.segmentName)
            let tail = index.flatMap { _ in
                (try? OpenFile(path: journalDirectory + "/" + state.segmentName, flags: O_RDONLY))
                    .flatMap { try? Self.readUsedPart(of: $0, from: state.segmentOffset, afterPowerCut: false).1 }
            }
            var sound = tail.map { $0.records.first.map { $0.sequence == namespaceThen.appliedSequence + 1 } ?? true } ?? false
            if case .corrupt? = tail?.ending { sound = false }
            if !sound {
                logger.info("the warm checkpoint's journal position does not match the journal: reading it from the checkpoint", metadata: [
                    "export": "\(exportName)", "segment": "\(state.segmentName)", "offset": "\(state.segmentOffset)",
                    "segmentFound": "\(index != nil)", "next": "\(tail?.records.first.map { String($0.sequence) } ?? "none")",
                ])
            }
            if let index, sound {
                namespace = namespaceThen
                history = state.history
                touchesKnownFrom = state.touchesKnownFrom
                lastTouched = state.lastTouched
                immediateRanges = state.immediateRanges
                immediateRangeCount = state.immediateRanges.values.reduce(0) { $0 + $1.count }
                journalBytesSinceCheckpoint = state.journalBytes
                resume = (index, state.segmentOffset)
                dataFilesMatch = state.dataFilesMatch
                vouchedSequence = namespaceThen.appliedSequence
                warm = nil
            }
        }
        let warmSequence = warm?.0.appliedSequence ?? 0
        var cuts = ReplayCuts()
        for (index, name) in segments.enumerated() where index >= resume?.index ?? 0 {
            let path = journalDirectory + "/" + name
            let file = try OpenFile(path: path, flags: O_RDWR)
            let start = index == resume?.index ? resume!.offset : 0
            let (bytes, scan) = try Self.readUsedPart(of: file, from: start, afterPowerCut: !sameBoot)
            // A gap is reported below, as damage.
            for record in scan.records where record.sequence == history.last + 1 {
                history.append(sequence: record.sequence, epoch: record.epoch)
            }
            for record in scan.records where record.sequence > namespace.appliedSequence && record.sequence <= warmSequence {
                if case .write(let ino, _, let offset, let data) = record.operation, !data.isEmpty {
                    rememberImmediate(ino, offset..<offset + UInt64(data.count))
                }
            }
            if let warm = warm?.0, namespace.appliedSequence < warm.appliedSequence,
               scan.records.contains(where: { $0.sequence == warm.appliedSequence }) {
                namespace = warm
                // The records up to it were not applied: which files they changed is not known.
                touchesKnownFrom = warm.appliedSequence
            }
            for record in scan.records where record.sequence > namespace.appliedSequence {
                guard record.sequence == namespace.appliedSequence + 1 else {
                    throw StoreError.corruptJournal(file: path, offset: 0,
                        reason: "record \(record.sequence) follows \(namespace.appliedSequence): records are missing")
                }
                if case .write(let ino, let handle, let offset, let data) = record.operation, record.writeCount > 0,
                   let target = try? namespace.writeOffset(ino, handle: handle, offset: offset, count: record.writeCount) {
                    if !data.isEmpty {
                        // An immediate write: after a reboot its data may not have
                        // reached the data file. In the same boot the page cache has it.
                        if !sameBoot { try data.withUnsafeBytes { try files.write(ino, $0, at: target, indirect: false) } }
                        rememberImmediate(ino, target..<target + UInt64(data.count))
                    }
                    cuts.wrote(ino, target..<target + UInt64(record.writeCount))
                }
                let outcome = namespace.apply(record)
                noteTouched(record, outcome.effects)
                for effect in outcome.effects {
                    switch effect {
                    case .truncate(let ino, let size): cuts.truncated(ino, to: size)
                    case .remove(let ino): cuts.removed(ino)
                    }
                }
                try carryOut(outcome.effects.filter { if case .remove = $0 { true } else { false } })
            }
            let isLast = index == segments.count - 1
            switch scan.ending {
            case .clean: break
            case .tornTail(let offset) where isLast:
                // Zero it, so that records appended after it are not read as damage.
                let tail = bytes[offset...].lastIndex(where: { $0 != 0 })! + 1
                logger.warning("dropping the end of the journal: it did not reach the disk whole, and no record says it was made durable", metadata: [
                    "export": "\(exportName)", "file": "\(path)", "offset": "\(start + offset)", "bytes": "\(tail - offset)",
                    "action": "none: nothing fsync'd is lost; the standby, if it has these records, keeps them",
                ])
                try file.write([UInt8](repeating: 0, count: tail - offset), at: UInt64(start + offset))
            case .tornTail(let offset):
                throw StoreError.corruptJournal(file: path, offset: start + offset, reason: "incomplete record before the last segment")
            case .corrupt(let offset, let reason):
                throw StoreError.corruptJournal(file: path, offset: start + offset, reason: reason)
            }
            journalBytesSinceCheckpoint += scan.validBytes
            if isLast {
                segment = file
                segmentOffset = start + scan.validBytes
            }
        }
        if segments.isEmpty { try startSegment() }
        for ino in cuts.inodes { try files.zero(ino, cuts) }
        if !sameBoot {
            // Indirect writes of the last boot may not have reached the data
            // files: this node's files can differ from the peer's anywhere.
            if !recordedBoot.isEmpty { try Disk.writeAtomically([], to: unverifiedPath, directory: directory) }
            // Only now, with every write of the journal in the data files again.
            try Disk.writeAtomically(currentBoot, to: directory + "/boot", directory: directory)
        }
        logger.info("export opened", metadata: [
            "export": "\(exportName)", "directory": "\(directory)", "epoch": "\(epoch)",
            "sequence": "\(namespace.appliedSequence)", "replayedRecords": "\(namespace.appliedSequence - started)",
            "inodes": "\(namespace.inodeCount)", "journalBytes": "\(journalBytesSinceCheckpoint)",
            "duration": "\(ContinuousClock.now - openStarted)",
        ])
        // Records after the warm checkpoint were applied after it vouched.
        return dataFilesMatch && vouchedSequence == namespace.appliedSequence
    }

    private let openStarted: ContinuousClock.Instant

    /// The journal's segments, oldest first, without those the checkpoint
    /// replaced: a checkpoint at sequence C starts segment C+1 and deletes
    /// the older ones, but a power cut may bring them back (their deletion
    /// not yet durable), unsynced tails and all. Every record in them is in
    /// the checkpoint, so they are deleted again, unread.
    private func journalSegmentsAfterCheckpoint() throws -> [String] {
        let all = try Disk.list(journalDirectory).filter { $0.hasSuffix(".log") }.sorted()
        let replaced = all.filter { UInt64($0.dropLast(4), radix: 16).map { $0 <= namespace.appliedSequence } ?? false }
        guard !replaced.isEmpty else { return all }
        logger.notice("deleting journal segments that the checkpoint replaced (their deletion did not reach the disk)", metadata: [
            "export": "\(exportName)", "segments": "\(replaced.joined(separator: ", "))",
            "checkpointSequence": "\(namespace.appliedSequence)",
        ])
        for name in replaced { try Disk.remove(journalDirectory + "/" + name) }
        try Disk.syncDirectory(journalDirectory)
        return all.filter { !replaced.contains($0) }
    }

    /// A preallocated segment kept aside, so that the journal can roll over
    /// once more when the disk is full: the records of operations that free
    /// space (or take none) still fit, and a full export can be cleaned up
    /// through its mounts. Not a `.log`: replay never reads it.
    private var spareSegment: OpenFile?
    private var spareSegmentPath: String { journalDirectory + "/spare" }
    /// After a failed preallocation, the next is not tried before this.
    private var spareRetryNotBefore: ContinuousClock.Instant?

    /// Preallocates the spare segment unless it exists; false when the disk has no room for it.
    private func prepareSpareSegment() -> Bool {
        if spareSegment != nil { return true }
        if let notBefore = spareRetryNotBefore, ContinuousClock.now < notBefore { return false }
        do {
            let file = try OpenFile(path: spareSegmentPath, flags: O_RDWR | O_CREAT)
            try file.preallocate(bytes: limits.segmentBytes)
            spareSegment = file
            if spareRetryNotBefore != nil {
                logger.notice("the journal's spare segment is back: every operation is taken again", metadata: ["export": "\(exportName)"])
            }
            spareRetryNotBefore = nil
            return true
        } catch {
            try? Disk.remove(spareSegmentPath)
            if spareRetryNotBefore == nil {
                logger.warning("the disk is full: operations that take space are refused (ENOSPC); those that free space are taken", metadata: [
                    "export": "\(exportName)", "directory": "\(journalDirectory)", "error": "\(error)",
                    "action": "free space: delete files through a mount, or free the node's disk",
                ])
            }
            spareRetryNotBefore = ContinuousClock.now + .seconds(1)
            return false
        }
    }

    /// `usingSpare`: false for a checkpoint's cut, which must not take the
    /// room kept for a full disk (its checkpoint may then fail for want of
    /// space, and the spare would be gone).
    private func startSegment(usingSpare: Bool = true) throws {
        let name = String(namespace.appliedSequence + 1, radix: 16).leftPadded(to: 16) + ".log"
        let path = journalDirectory + "/" + name
        if usingSpare, spareSegment != nil {
            // Already preallocated: it becomes the segment (reopened under
            // its new name, so every write is seen at the path it has).
            try Disk.rename(spareSegmentPath, to: path)
            try Disk.syncDirectory(journalDirectory)
            spareSegment = nil
            segment = try OpenFile(path: path, flags: O_RDWR)
            segmentOffset = 0
            segmentDurableOffset = 0
            _ = prepareSpareSegment()
            return
        }
        let file = try OpenFile(path: path, flags: O_RDWR | O_CREAT)
        do {
            try file.preallocate(bytes: limits.segmentBytes)
        } catch {
            try? Disk.remove(path)
            throw error
        }
        try Disk.syncDirectory(journalDirectory)
        segment = file
        segmentOffset = 0
        segmentDurableOffset = 0
    }

    // MARK: - Queries (any thread)

    /// Runs `body` with the namespace under the read lock.
    public func withNamespace<T>(_ body: (borrowing Namespace) throws -> T) rethrows -> T {
        try lock.reading { try body(namespace) }
    }

    public var appliedSequence: UInt64 { withNamespace { $0.appliedSequence } }

    /// Which epoch wrote each record since the checkpoint.
    public var journalHistory: JournalHistory { lock.reading { history } }

    /// The regular files whose data the records after `sequence` changed;
    /// nil when the journal no longer tells (checkpointed past `sequence`).
    public func filesTouched(after sequence: UInt64) -> Set<InodeNumber>? {
        lock.reading {
            guard sequence >= touchesKnownFrom else { return nil }
            return Set(lastTouched.lazy.filter { $0.value > sequence }.map(\.key))
        }
    }

    /// On a returning standby: the files whose data may differ from the
    /// server's copy as of `sequence`, the last record both hold. Those the
    /// records after it changed, and those written after the journal's last
    /// record (a server killed between a file write and its record left a
    /// write no journal holds). Nil when this node cannot tell: the journal
    /// no longer reaches back, or the node rebooted since the files were written.
    public func filesChanged(after sequence: UInt64) -> Set<InodeNumber>? {
        guard !Disk.exists(unverifiedPath), var changed = filesTouched(after: sequence) else { return nil }
        let segments = (try? Disk.list(journalDirectory)) ?? []
        guard let lastRecordTime = segments.compactMap({ try? Disk.modificationTime(journalDirectory + "/" + $0) }).max() else {
            return nil
        }
        for name in (try? Disk.list(files.directory)) ?? [] {
            // Equal times count: the clock behind file times is coarse.
            if let ino = InodeNumber(name, radix: 16), let time = try? Disk.modificationTime(files.directory + "/" + name),
               time >= lastRecordTime {
                changed.insert(ino)
            }
        }
        return changed
    }

    /// Reads file data into `buffer`: the bytes at `offset` up to the file's
    /// size, zeros in holes. Returns how many bytes the file has there.
    public func read(_ ino: InodeNumber, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Result<Int, Errno> {
        let size: UInt64
        do {
            size = try withNamespace { namespace throws(Errno) in try namespace.readableSize(ino) }
        } catch let error as Errno {
            return .failure(error)
        }
        let count = Int(min(UInt64(buffer.count), size > offset ? size - offset : 0))
        return .success(try files.read(ino, offset: offset, count: count, into: buffer))
    }

    /// The reply with `st_blocks` of regular files taken from their data files.
    public func withAllocatedBlocks(_ reply: Reply) -> Reply {
        switch reply {
        case .entry(var attributes):
            attributes.blocks = files.allocatedBlocks(attributes)
            return .entry(attributes)
        case .attributes(var attributes):
            attributes.blocks = files.allocatedBlocks(attributes)
            return .attributes(attributes)
        case .created(var attributes, let handle):
            attributes.blocks = files.allocatedBlocks(attributes)
            return .created(attributes, handle: handle)
        default:
            return reply
        }
    }

    public func statistics() throws -> FileSystemStatistics {
        let st = try Disk.statfs(directory)
        return FileSystemStatistics(
            blockSize: UInt32(st.f_bsize), totalBlocks: UInt64(st.f_blocks), freeBlocks: UInt64(st.f_bfree),
            availableBlocks: UInt64(st.f_bavail), totalInodes: max(UInt64(st.f_files), UInt64(withNamespace { $0.inodeCount })),
            freeInodes: UInt64(st.f_ffree), maxNameLength: UInt32(FileName.maxLength))
    }

    // MARK: - Mutations (one at a time)

    /// The first reply to a request that was applied already.
    public func cachedReply(session: UInt64, request: UInt64) -> Reply? {
        withNamespace { $0.cachedReply(session: session, request: request) }
    }

    /// The client has the replies below `request`: they need not be cached.
    public func forgetReplies(session: UInt64, below request: UInt64) {
        lock.writing { namespace.forgetReplies(session: session, below: request) }
    }

    /// What applying a mutation gave: the reply for the client, and the
    /// record that went into the journal (with its write data, as a standby
    /// needs it), or nil when nothing was journaled.
    public struct Applied: Sendable {
        public var reply: Reply
        public var record: JournalRecord?
    }

    /// Applies a client mutation: stamps it, applies it to the namespace,
    /// appends it to the journal, then truncates or removes data files.
    /// A failure after the namespace changed throws
    /// `StoreError.journalWriteFailed`: the server must stop.
    public func apply(_ operation: Operation, session: UInt64, requestSequence: UInt64) throws -> Applied {
        try ensureOpen()
        if case .write(let ino, let handle, let offset, let data) = operation {
            return try data.withUnsafeBytes {
                try applyWrite(ino, handle: handle, offset: offset, data: $0, session: session, requestSequence: requestSequence)
            }
        }
        // Most forgets are of inodes that still have names: nothing to record.
        if case .forget(let ino) = operation, !withNamespace({ $0.isOrphan(ino) }) { return Applied(reply: .done, record: nil) }
        if let refusal = try reserveJournalSpace(for: operation) { return Applied(reply: refusal, record: nil) }
        let grown: GrownDataFile?
        switch growDataFileFirst(operation) {
        case .success(let result): grown = result
        case .failure(let errno): return Applied(reply: .error(errno), record: nil)
        }
        let applied = try commit { [epoch] sequence in
            JournalRecord(sequence: sequence, epoch: epoch, time: .now(), session: session, requestSequence: requestSequence,
                          operation: operation)
        }
        if let grown, case .error = applied.reply {
            do { try files.truncate(grown.inode, to: grown.sizeBefore) } catch { dataFilesMayDiffer = true }
        }
        return applied
    }

    private struct GrownDataFile {
        var inode: InodeNumber
        var sizeBefore: UInt64
    }

    /// A size change the node's own file system cannot carry out (past its
    /// largest file: EFBIG, or EIO) must be refused before its record is
    /// journaled: a record no replay can apply would keep the export from
    /// opening again, here and on the standby. So a growing truncate grows
    /// the data file first and is refused with that errno if it cannot. A
    /// shrink cannot fail that way and stays after the record, so that a
    /// failed journal write never cuts data. No mutation runs meanwhile (the
    /// server's mutation lock is held), and a growth the namespace then
    /// refuses is undone.
    private func growDataFileFirst(_ operation: Operation) -> Result<GrownDataFile?, Errno> {
        guard case .setattr(let ino, let changes, _) = operation, let size = changes.size,
              let attributes = withNamespace({ $0.attributes(of: ino) }), Mode.isRegular(attributes.mode),
              size > attributes.size, size <= Namespace.maxFileSizeBytes else { return .success(nil) }
        do {
            try files.truncate(ino, to: size)
            return .success(GrownDataFile(inode: ino, sizeBefore: attributes.size))
        } catch {
            dataFilesMayDiffer = true
            let errno = (error as? SystemCallError).map { Errno($0.errno) } ?? .EIO
            logger.warning("size change refused: the node's file system cannot carry it out", metadata: [
                "export": "\(exportName)", "inode": "\(ino)", "size": "\(size)", "error": "\(error)",
                "action": "none: the client got \(errno); nothing was journaled",
            ])
            return .failure(errno)
        }
    }

    /// A write: the data goes to the data file first, so that a failed data
    /// write (a full disk) returns its error and changes nothing; then the
    /// record: with the data (immediate) or with its byte count only (indirect).
    public func applyWrite(_ ino: InodeNumber, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer,
                           session: UInt64, requestSequence: UInt64) throws -> Applied {
        try ensureOpen()
        if let refusal = try reserveJournalSpace(takingSpace: true) { return Applied(reply: refusal, record: nil) }
        let written: (target: UInt64, journaled: [UInt8])
        do {
            written = try writeData(ino, handle: handle, offset: offset, data: data)
        } catch {
            dataFilesMayDiffer = true
            logger.warning("file data write failed", metadata: ["export": "\(exportName)", "inode": "\(ino)", "error": "\(error)"])
            return Applied(reply: .error((error as? SystemCallError).map { Errno($0.errno) } ?? .EIO), record: nil)
        }
        // The record holds where the data landed (O_APPEND resolved), so a
        // reader of the journal knows each write's range without replaying.
        let operation = Operation.write(ino, handle: handle, offset: written.target, data: written.journaled)
        return try commit { [epoch] sequence in
            JournalRecord(sequence: sequence, epoch: epoch, time: .now(), session: session, requestSequence: requestSequence,
                          operation: operation, writeCount: UInt32(data.count))
        }
    }

    /// Applies a record from the active server, on the standby replica: the
    /// same steps as the server took, so both nodes compute the same namespace.
    public func applyReplicated(_ record: JournalRecord) throws -> Applied {
        try ensureOpen()
        guard record.epoch >= epoch else { throw ReplicationError.staleEpoch(record: record.epoch, replica: epoch) }
        if record.epoch > epoch { try persistEpoch(record.epoch) }
        // The replica takes what the server took: the space kept aside included.
        if let refusal = try reserveJournalSpace(takingSpace: false) { throw ReplicationError.refused("\(refusal)") }
        if case .failure(let errno) = growDataFileFirst(record.operation) {
            throw ReplicationError.refused("record \(record.sequence): this node's file system cannot carry out its size change (\(errno))")
        }
        var operation = record.operation
        if case .write(let ino, let handle, let offset, let data) = record.operation {
            let written: (target: UInt64, journaled: [UInt8])
            do {
                written = try data.withUnsafeBytes { try writeData(ino, handle: handle, offset: offset, data: $0) }
            } catch {
                dataFilesMayDiffer = true
                throw error
            }
            operation = .write(ino, handle: handle, offset: offset, data: written.journaled)
        }
        return try commit { sequence in
            var stored = record
            stored.operation = operation
            return stored
        }
    }

    /// Writes a write's data to the data file at the offset the namespace
    /// gives; returns that offset and the data the journal must hold (empty
    /// for an indirect write). A refused write writes nothing.
    private func writeData(_ ino: InodeNumber, handle: UInt64, offset: UInt64,
                           data: UnsafeRawBufferPointer) throws -> (target: UInt64, journaled: [UInt8]) {
        let count = UInt32(data.count)
        guard count > 0, let target = withNamespace({ try? $0.writeOffset(ino, handle: handle, offset: offset, count: count) }) else {
            return (offset, [])
        }
        let range = target..<target + UInt64(count)
        let immediate = data.count <= Self.immediateWriteMaxBytes || immediateRanges[ino]?.overlaps(range) == true
            || progress.withLock { $0.immediateBeforeCut[ino]?.overlaps(range) == true }
        try files.write(ino, data, at: target, indirect: !immediate)
        guard immediate else { return (target, []) }
        rememberImmediate(ino, range)
        return (target, Array(data))
    }

    /// A namespace snapshot for a restart in this same boot (a promotion of
    /// this replica): the next open starts from it instead of replaying the
    /// journal since the durable checkpoint. It carries what the journal up
    /// to it would tell (where the journal ends, the records' epochs, where
    /// immediate writes landed, which files changed), so that the open reads
    /// only the records after it. No mutation may be in flight. Not synced:
    /// it is used in this boot only, where the page cache has it.
    public func writeWarmCheckpoint() throws {
        let (boot, _) = boots()
        var bytes: [UInt8] = [UInt8(boot.count)] + boot
        let (checkpoint, state) = lock.reading { (namespace.checkpoint(), encodeReplayState()) }
        bytes += Self.warmStateMagic
        withUnsafeBytes(of: UInt32(state.count).littleEndian) { bytes += $0 }
        bytes += state
        withUnsafeBytes(of: CRC32C.checksum(state).littleEndian) { bytes += $0 }
        bytes += checkpoint
        let temporary = warmCheckpointPath + ".tmp"
        try OpenFile(path: temporary, flags: O_WRONLY | O_CREAT | O_TRUNC).write(bytes)
        try Disk.rename(temporary, to: warmCheckpointPath)
    }

    private var warmCheckpointPath: String { directory + "/checkpoint.warm" }
    /// Marks a warm checkpoint that carries the replay state (see `writeWarmCheckpoint`).
    private static let warmStateMagic: [UInt8] = Array("BWS1".utf8)

    /// What replaying the journal up to the warm checkpoint would give.
    private struct ReplayState {
        var segmentName: String
        var segmentOffset: Int
        var journalBytes: Int
        var history: JournalHistory
        var touchesKnownFrom: UInt64
        var lastTouched: [InodeNumber: UInt64]
        var immediateRanges: [InodeNumber: ByteRanges]
        /// The data files matched the namespace when it was written.
        var dataFilesMatch: Bool
    }

    /// Called under the read lock.
    private func encodeReplayState() -> [UInt8] {
        var w = ByteWriter(capacity: 256 + 24 * immediateRangeCount)
        w.write(String(segment.path.split(separator: "/").last ?? ""))
        w.write(UInt64(segmentOffset))
        w.write(UInt64(journalBytesSinceCheckpoint))
        w.write(UInt32(history.runs.count))
        for run in history.runs {
            w.write(run.first)
            w.write(run.epoch)
        }
        w.write(history.last)
        w.write(touchesKnownFrom)
        w.write(UInt32(lastTouched.count))
        for (ino, sequence) in lastTouched {
            w.write(ino)
            w.write(sequence)
        }
        // With those of a checkpoint not yet durable: a replay from the one
        // before re-applies them too.
        var immediate = immediateRanges
        for (ino, ranges) in progress.withLock({ $0.immediateBeforeCut }) {
            for range in ranges.ranges { immediate[ino, default: ByteRanges()].insert(range) }
        }
        w.write(UInt32(immediate.count))
        for (ino, ranges) in immediate {
            w.write(ino)
            w.write(UInt32(ranges.ranges.count))
            for range in ranges.ranges {
                w.write(range.lowerBound)
                w.write(range.upperBound)
            }
        }
        w.write(!dataFilesMayDiffer)
        return w.bytes
    }

    private static func decodeReplayState(_ bytes: [UInt8]) throws(DecodeError) -> ReplayState {
        try ByteReader.decode(bytes) { (r: inout ByteReader) throws(DecodeError) -> ReplayState in
            let name = try r.readString(limit: 256, kind: "segment name")
            let offset = Int(try r.readUInt64())
            let journalBytes = Int(try r.readUInt64())
            var runs: [JournalHistory.Run] = []
            for _ in 0..<Int(try r.readUInt32()) { runs.append(JournalHistory.Run(first: try r.readUInt64(), epoch: try r.readUInt64())) }
            let history = try JournalHistory(runs: runs, last: try r.readUInt64())
            let touchesKnownFrom = try r.readUInt64()
            var lastTouched: [InodeNumber: UInt64] = [:]
            for _ in 0..<Int(try r.readUInt32()) { lastTouched[try r.readUInt64()] = try r.readUInt64() }
            var immediate: [InodeNumber: ByteRanges] = [:]
            for _ in 0..<Int(try r.readUInt32()) {
                let ino = try r.readUInt64()
                var ranges = ByteRanges()
                for _ in 0..<Int(try r.readUInt32()) {
                    let lower = try r.readUInt64()
                    let upper = try r.readUInt64()
                    guard lower <= upper else { throw .invalid("byte range \(lower)..<\(upper)") }
                    ranges.insert(lower..<upper)
                }
                immediate[ino] = ranges
            }
            let dataFilesMatch = try r.readBool()
            try r.expectEnd()
            return ReplayState(segmentName: name, segmentOffset: offset, journalBytes: journalBytes, history: history,
                               touchesKnownFrom: touchesKnownFrom, lastTouched: lastTouched, immediateRanges: immediate,
                               dataFilesMatch: dataFilesMatch)
        }
    }

    /// The warm checkpoint, if it was written in this boot and is newer than
    /// the durable one, with its replay state when it carries a sound one;
    /// it is consumed (deleted) either way.
    private func takeWarmCheckpoint(currentBoot: [UInt8]) -> (Namespace, ReplayState?)? {
        guard let bytes = try? OpenFile(path: warmCheckpointPath, flags: O_RDONLY).readAll() else { return nil }
        try? Disk.remove(warmCheckpointPath)
        guard let length = bytes.first.map(Int.init), bytes.count > 1 + length, !currentBoot.isEmpty,
              Array(bytes[1..<1 + length]) == currentBoot else { return nil }
        var rest = Array(bytes[(1 + length)...])
        var state: ReplayState?
        let magic = Self.warmStateMagic.count
        if rest.count >= magic + 8, Array(rest[0..<magic]) == Self.warmStateMagic {
            let count = rest[magic..<magic + 4].reversed().reduce(0) { $0 << 8 | Int($1) }
            guard rest.count >= magic + 8 + count else { return nil }
            let encoded = Array(rest[(magic + 4)..<(magic + 4 + count)])
            let crc = rest[(magic + 4 + count)..<(magic + 8 + count)].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            if CRC32C.checksum(encoded) == crc { state = try? Self.decodeReplayState(encoded) }
            rest = Array(rest[(magic + 8 + count)...])
        }
        guard let warm = try? Namespace(checkpoint: rest), warm.appliedSequence >= namespace.appliedSequence else { return nil }
        // The state must start at the durable checkpoint this open read and end at the warm one.
        if let known = state, known.history.runs.first?.first != namespace.appliedSequence
            || known.history.last != warm.appliedSequence || known.touchesKnownFrom < namespace.appliedSequence {
            state = nil
        }
        return (warm, state)
    }

    private func noteTouched(_ record: JournalRecord, _ effects: [DataEffect]) {
        for ino in record.filesTouched(effects: effects) { lastTouched[ino] = record.sequence }
    }

    private func rememberImmediate(_ ino: InodeNumber, _ range: Range<UInt64>) {
        let before = immediateRanges[ino]?.count ?? 0
        immediateRanges[ino, default: ByteRanges()].insert(range)
        immediateRangeCount += immediateRanges[ino]!.count - before
    }

    /// Truncations and removals, after the record is in the journal.
    private func carryOut(_ effects: [DataEffect]) throws {
        for case .remove(let ino) in effects {
            immediateRangeCount -= immediateRanges.removeValue(forKey: ino)?.count ?? 0
        }
        try files.carryOut(effects)
    }

    /// The marker a server leaves while it answers without its standby
    /// (DRBD's "peer outdated"): this node's copy is then the newest, and a
    /// node that starts without hearing its peer may serve the export only
    /// with it (DESIGN.md §4.7).
    public static func standbyOutdatedMarker(in directory: String) -> String { directory + "/standby-outdated" }

    /// Says durably whether the standby lacks records answered here: set
    /// before the first reply answered alone, cleared once the standby has
    /// every one of them and before it may watch (and take over) this server.
    public func markStandbyOutdated(_ outdated: Bool) {
        let path = Self.standbyOutdatedMarker(in: directory)
        do {
            if outdated {
                try Disk.writeAtomically(Array("\(epoch)\n".utf8), to: path, directory: directory)
            } else if Disk.exists(path) {
                try Disk.remove(path)
                try Disk.syncDirectory(directory)
            }
        } catch {
            logger.error("cannot record whether the standby is outdated", metadata: [
                "export": "\(exportName)", "directory": "\(directory)", "outdated": "\(outdated)", "error": "\(error)",
                "action": outdated
                    ? "none now; if this node restarts while its peer is down, it waits for the peer instead of serving"
                    : "check the disk: a start without the peer could serve this node's copy",
            ])
        }
    }

    /// Persists a new epoch before anything of it is announced (DESIGN.md §5 step 3).
    public func persistEpoch(_ newEpoch: UInt64) throws {
        precondition(newEpoch >= epoch, "epochs only grow")
        try Disk.writeAtomically(Array("\(newEpoch)\n".utf8), to: directory + "/epoch", directory: directory)
        epoch = newEpoch
    }

    /// Gives the data directory up: its lock is released at once, so that
    /// another process may open it (the agent's replica, when it is promoted,
    /// hands the directory to the new server). Explicit rather than left to
    /// deinit, since a reference may linger on another thread; such a
    /// reference can no longer write (`StoreError.closed`) beside the new owner.
    public func close() {
        checkpointWriting.withLock {
            lock.writing {
                closed = true
                ownership.release()
            }
        }
    }

    /// Before any data is written: a closed store is not the directory's owner any more.
    private func ensureOpen() throws(StoreError) {
        if lock.reading({ closed }) { throw .closed(directory: directory) }
    }

    /// Makes sure the current journal segment has room for a record; the
    /// refusal to send when no new segment can be preallocated. Runs under
    /// the caller's mutation lock, as the appends do. While the spare segment
    /// is used up (a full disk), operations that take space are refused.
    private func reserveJournalSpace(for operation: Operation) throws -> Reply? {
        try reserveJournalSpace(takingSpace: operation.takesSpace)
    }

    private func reserveJournalSpace(takingSpace: Bool) throws -> Reply? {
        if takingSpace, spareSegment == nil, !prepareSpareSegment() { return .error(.ENOSPC) }
        guard segmentOffset + Self.maxRecordBytes > limits.segmentBytes else { return nil }
        // A later sync() flushes only the new segment: the records of this one
        // (acknowledged, maybe answered to an fsync) go to disk first, or a power
        // cut could leave a hole before records that are on disk, and replay
        // would refuse the export. A failed flush may have lost them: stop.
        do {
            try segment.sync()
        } catch {
            throw StoreError.journalWriteFailed((error as? SystemCallError) ?? SystemCallError("fdatasync", path: segment.path, errno: EIO))
        }
        do {
            try startSegment()
            return nil
        } catch {
            logger.error("cannot preallocate a journal segment: refusing mutations", metadata: [
                "export": "\(exportName)", "directory": "\(journalDirectory)", "error": "\(error)",
                "action": "free space under the data directory",
            ])
            return .error((error as? SystemCallError).map { Errno($0.errno) } ?? .EIO)
        }
    }

    /// Applies the record `make` builds for the next sequence, journals it,
    /// carries out its effects. The record returned is the journaled one: an
    /// indirect write's data is not in it (the standby gets it from the
    /// request's buffer, see `JournalRecord.withWriteData`).
    private func commit(_ make: (UInt64) throws -> JournalRecord) throws -> Applied {
        do {
            return try commitRecord(make)
        } catch {
            // Its data may be in the data files already: they are no longer known to match.
            dataFilesMayDiffer = true
            throw error
        }
    }

    private func commitRecord(_ make: (UInt64) throws -> JournalRecord) throws -> Applied {
        let (record, outcome) = try lock.writing { () throws -> (JournalRecord, Namespace.Outcome) in
            let record = try make(namespace.appliedSequence + 1)
            guard record.sequence == namespace.appliedSequence + 1 else {
                throw ReplicationError.outOfOrder(record: record.sequence, replica: namespace.appliedSequence)
            }
            let outcome = namespace.apply(record)
            history.append(sequence: record.sequence, epoch: record.epoch)
            noteTouched(record, outcome.effects)
            return (record, outcome)
        }
        do {
            let bytes = JournalCodec.encode(record, durableThrough: UInt64(segmentDurableOffset))
            try segment.write(bytes, at: UInt64(segmentOffset))
            segmentOffset += bytes.count
            let half = limits.checkpointAfterBytes / 2
            if journalBytesSinceCheckpoint < half && journalBytesSinceCheckpoint + bytes.count >= half {
                // Halfway to a checkpoint: the disk starts writing what the
                // checkpoint must flush, so the checkpoint (which mutations
                // wait for) finds little left.
                files.startWriteback()
            }
            journalBytesCount.add(bytes.count, ordering: .relaxed)
            try carryOut(outcome.effects)
        } catch {
            throw StoreError.journalWriteFailed((error as? SystemCallError) ?? SystemCallError("journal append", path: segment.path, errno: EIO))
        }
        if checkpointDue { beginCheckpoint() }
        return Applied(reply: outcome.reply, record: record)
    }

    // MARK: - Checkpoints

    /// Runs the writing half of a checkpoint (see `beginCheckpoint`) away
    /// from the mutation lock; nil: at once, inside the mutation that made it
    /// due (tests). Servers and replicas set `writesCheckpointsInBackground`,
    /// so that neither mutations nor heartbeats wait for a checkpoint's
    /// syncs and encoding, which grow with the export.
    public var checkpointRunner: (@Sendable (_ write: @escaping @Sendable () -> Void) -> Void)?

    /// Checkpoints are written on a thread of their own.
    public func writesCheckpointsInBackground() {
        let queue = DispatchQueue(label: "baton.checkpoint")
        checkpointRunner = { write in queue.async(execute: write) }
    }

    /// Shared by the mutation lock's holder and the checkpoint's writer.
    private struct CheckpointProgress {
        var inFlight = false
        /// After a failed checkpoint, the next waits until the journal has grown this far.
        var notBefore = 0
        /// Where immediate writes landed before the cut of a checkpoint that
        /// is not durable yet: a replay from the checkpoint before re-applies
        /// them, so a later write over them must be immediate too.
        var immediateBeforeCut: [InodeNumber: ByteRanges] = [:]
    }
    private let progress = Mutex(CheckpointProgress())
    /// Held by the checkpoint's writer while it changes the directory, and by
    /// `close`: a closed store's writer changes nothing beside the next owner.
    private let checkpointWriting = PthreadMutex()

    /// What a checkpoint writes, fixed at its cut.
    private struct CheckpointCut: @unchecked Sendable {
        var namespace: Namespace
        /// The data files written before the cut: on disk before the journal that holds their writes goes.
        var files: Set<InodeNumber>
        /// The journal segments before the cut: every record in them is in `namespace`.
        var replacedSegments: [String]
        var journalBytes: Int
    }

    private var checkpointDue: Bool {
        let (inFlight, notBefore) = progress.withLock { ($0.inFlight, $0.notBefore) }
        return !inFlight && journalBytesSinceCheckpoint >= notBefore
            && (journalBytesSinceCheckpoint >= limits.checkpointAfterBytes || immediateRangeCount >= Self.maxImmediateRanges)
    }

    /// Writes the namespace as a checkpoint and deletes the journal before
    /// it, before returning (with the mutation lock held, as for a mutation).
    public func checkpoint() throws(StoreError) {
        do {
            try writeCheckpoint(try cutCheckpoint())
        } catch {
            progress.withLock { $0.inFlight = false }
            throw StoreError(error)
        }
    }

    /// Cuts a checkpoint at the last record, under the mutation lock, in
    /// milliseconds whatever the export's size: a copy of the namespace
    /// (copy on write: later mutations copy what they change), the data files
    /// written since the last cut, and a new journal segment, so that the
    /// segments before it hold just the records the checkpoint replaces.
    private func cutCheckpoint() throws -> CheckpointCut {
        let replaced = try Disk.list(journalDirectory).filter { $0.hasSuffix(".log") }
        // As at any roll-over: the records of this segment reach the disk
        // before any of the next, or a power cut before the checkpoint is
        // written could leave a hole that replay refuses.
        try segment.sync()
        segmentDurableOffset = segmentOffset
        try startSegment(usingSpare: false)
        let cut = CheckpointCut(namespace: lock.reading { namespace }, files: files.takeWritten(),
                                replacedSegments: replaced, journalBytes: journalBytesSinceCheckpoint)
        progress.withLock {
            $0.inFlight = true
            for (ino, ranges) in immediateRanges {
                for range in ranges.ranges { $0.immediateBeforeCut[ino, default: ByteRanges()].insert(range) }
            }
        }
        immediateRanges = [:]
        immediateRangeCount = 0
        return cut
    }

    /// A checkpoint that came due: cut under the mutation lock, written by
    /// `checkpointRunner`. One that fails (a full or a failing disk) stops
    /// nothing: the journal still holds every record, so the server goes on
    /// and tries again once the journal has grown by an eighth of a
    /// checkpoint. A server that stopped instead would fail the same way
    /// after each restart (a crash loop).
    private func beginCheckpoint() {
        let cut: CheckpointCut
        do {
            cut = try cutCheckpoint()
        } catch {
            return checkpointFailed(error)
        }
        let write: @Sendable () -> Void = { [self] in
            do { try writeCheckpoint(cut) } catch { checkpointFailed(error) }
        }
        if let checkpointRunner { checkpointRunner(write) } else { write() }
    }

    private func checkpointFailed(_ error: any Error) {
        let journalBytes = journalBytesSinceCheckpoint
        progress.withLock {
            $0.inFlight = false
            $0.notBefore = journalBytes + max(1, limits.checkpointAfterBytes / 8)
        }
        logger.error("checkpoint failed: the journal keeps every record and grows until a checkpoint succeeds", metadata: [
            "export": "\(exportName)", "directory": "\(directory)", "error": "\(error)",
            "journalBytes": "\(journalBytes)",
            "action": "free space or fix the disk under the data directory; nothing was lost",
        ])
    }

    /// The writing half, without the mutation lock: mutations go on meanwhile
    /// into the segment the cut started.
    private func writeCheckpoint(_ cut: CheckpointCut) throws {
        let started = ContinuousClock.now
        let sequence = cut.namespace.appliedSequence
        try files.sync(written: cut.files)
        let bytes = cut.namespace.checkpoint()
        let written = try checkpointWriting.withLock { () throws -> Bool in
            guard !lock.reading({ closed }) else { return false }
            try Disk.writeAtomically(bytes, to: checkpointPath, directory: directory)
            lock.writing {
                history.checkpointed(at: sequence)
                lastTouched = lastTouched.filter { $0.value > sequence }
                touchesKnownFrom = max(touchesKnownFrom, sequence)
                journalBytesCount.subtract(cut.journalBytes, ordering: .relaxed)
            }
            progress.withLock { $0.immediateBeforeCut = [:] }
            for name in cut.replacedSegments { try Disk.remove(journalDirectory + "/" + name) }
            try Disk.syncDirectory(journalDirectory)
            return true
        }
        progress.withLock {
            $0.inFlight = false
            if written { $0.notBefore = 0 }
        }
        guard written else {
            return logger.info("checkpoint not written: the data directory was given up meanwhile", metadata: [
                "export": "\(exportName)", "sequence": "\(sequence)",
            ])
        }
        checkpointWrittenAt.store(time(nil), ordering: .relaxed)
        logger.info("checkpoint written", metadata: [
            "export": "\(exportName)", "sequence": "\(sequence)", "bytes": "\(bytes.count)",
            "segmentsDeleted": "\(cut.replacedSegments.count)", "duration": "\(ContinuousClock.now - started)",
        ])
    }

    /// Makes every acknowledged mutation durable: the data files of indirect
    /// writes since the last sync, then the journal (which holds the data of
    /// immediate writes). fsync, fdatasync and syncfs all mean this.
    public func sync() throws(StoreError) {
        do {
            try files.syncIndirect()
            let end = segmentOffset
            try segment.sync()
            segmentDurableOffset = end
        } catch {
            throw StoreError(error)
        }
    }

}

/// Why a replica cannot take a record; the server then sends a full copy.
public enum ReplicationError: Error, CustomStringConvertible, Sendable {
    case staleEpoch(record: UInt64, replica: UInt64)
    case outOfOrder(record: UInt64, replica: UInt64)
    case refused(String)

    public var description: String {
        switch self {
        case .staleEpoch(let record, let replica):
            "record of epoch \(record) refused: this replica is at epoch \(replica) (the sender was fenced)"
        case .outOfOrder(let record, let replica): "record \(record) does not follow \(replica)"
        case .refused(let why): why
        }
    }
}

/// The contents of regular files, one local file per inode, named by the
/// export's inode number (so nothing of the local file system leaks out).
final class DataFiles: @unchecked Sendable {
    let directory: String
    private let table = OpenFileTable()
    private let dirtyLock = PthreadMutex()
    /// Written by indirect writes or truncated since the last sync: an fsync flushes them.
    private var unsynced: Set<InodeNumber> = []
    /// Written at all since the last checkpoint: a checkpoint flushes them.
    private var written: Set<InodeNumber> = []
    /// A data file was created since the last sync: its name is durable only
    /// once the directory is synced, and without it its synced data is lost too.
    private var entriesUnsynced = false

    private let syncEachFileAtMost: Int

    init(directory: String, syncEachFileAtMost: Int) {
        self.directory = directory
        self.syncEachFileAtMost = syncEachFileAtMost
    }

    private func path(_ ino: InodeNumber) -> String { directory + "/" + String(ino, radix: 16) }

    /// `indirect`: the journal will not hold this data, so an fsync must flush the file.
    func write(_ ino: InodeNumber, _ data: UnsafeRawBufferPointer, at offset: UInt64, indirect: Bool) throws {
        try file(ino, create: true)!.write(data, at: offset)
        dirtyLock.withLock {
            written.insert(ino)
            if indirect { unsynced.insert(ino) }
        }
    }

    /// After a replay: zeros what the journal's truncations cut and no later
    /// write put back (see `ReplayCuts`), as holes where the file system can.
    func zero(_ ino: InodeNumber, _ cuts: ReplayCuts) throws {
        guard let file = try file(ino, create: false) else { return }
        let ranges = cuts.zeroRanges(ino, fileEnd: try file.size())
        guard !ranges.isEmpty else { return }
        for range in ranges { try file.zero(range) }
        dirtyLock.withLock {
            written.insert(ino)
            unsynced.insert(ino)
        }
    }

    func truncate(_ ino: InodeNumber, to size: UInt64) throws {
        try file(ino, create: true)!.truncate(to: size)
        dirtyLock.withLock {
            written.insert(ino)
            unsynced.insert(ino)
        }
    }

    func carryOut(_ effects: [DataEffect]) throws {
        for effect in effects {
            switch effect {
            case .truncate(let ino, let size):
                try truncate(ino, to: size)
            case .remove(let ino):
                table.remove(ino)
                dirtyLock.withLock {
                    written.remove(ino)
                    unsynced.remove(ino)
                }
                try Disk.remove(path(ino))
            }
        }
    }

    /// After a crash: a data file may hold a write whose record never reached
    /// the journal (never acknowledged) or belong to an inode that is gone.
    /// Cut each file to its inode's size and delete the orphans.
    func reconcile(with namespace: Namespace, logger: Logger, exportName: String) throws {
        var trimmed = 0
        var orphans = 0
        for name in try Disk.list(directory) {
            guard let ino = InodeNumber(name, radix: 16), let attributes = namespace.attributes(of: ino),
                  Mode.isRegular(attributes.mode) else {
                try Disk.remove(directory + "/" + name)
                orphans += 1
                continue
            }
            let file = try OpenFile(path: directory + "/" + name, flags: O_RDWR)
            if try file.size() > attributes.size {
                try file.truncate(to: attributes.size)
                trimmed += 1
            }
        }
        if trimmed + orphans > 0 {
            logger.notice("data files reconciled with the journal", metadata: [
                "export": "\(exportName)", "trimmed": "\(trimmed)", "orphansRemoved": "\(orphans)",
            ])
        }
    }

    private func file(_ ino: InodeNumber, create: Bool) throws -> OpenFile? {
        if let open = table.get(ino) { return open }
        let path = path(ino)
        let exists = Disk.exists(path)
        if !create && !exists { return nil }
        let open = try OpenFile(path: path, flags: O_RDWR | (create ? O_CREAT : 0))
        if !exists { dirtyLock.withLock { entriesUnsynced = true } }
        table.put(ino, open)
        return open
    }

    func read(_ ino: InodeNumber, offset: UInt64, count: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let target = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
        let got = try file(ino, create: false)?.read(into: target, at: offset) ?? 0
        // Past the data file's end but within the file's size is a hole: zeros.
        if got < count { UnsafeMutableRawBufferPointer(rebasing: target[got...]).initializeMemory(as: UInt8.self, repeating: 0) }
        return count
    }

    func allocatedBlocks(_ attributes: FileAttributes) -> UInt64 {
        guard Mode.isRegular(attributes.mode), attributes.size > 0,
              let file = try? file(attributes.inode, create: false) else { return 0 }
        var st = stat()
        return fstat(file.descriptor, &st) == 0 ? UInt64(st.st_blocks) : 0
    }

    func syncIndirect() throws {
        let inodes = dirtyLock.withLock { () -> Set<InodeNumber> in
            defer { unsynced.removeAll() }
            return unsynced
        }
        try sync(inodes) { unsynced.formUnion($0) }
        try syncEntries()
    }

    /// After the files' data: the names of the files created since the last sync.
    private func syncEntries() throws {
        guard dirtyLock.withLock({ () -> Bool in defer { entriesUnsynced = false }; return entriesUnsynced }) else { return }
        do {
            try Disk.syncDirectory(directory)
        } catch {
            dirtyLock.withLock { entriesUnsynced = true }
            throw error
        }
    }

    /// Syncs `inodes`. On a failure the files not known to be on disk are
    /// remembered again (`restore`, under the lock), so that the next fsync
    /// or checkpoint syncs them instead of calling them durable.
    private func sync(_ inodes: Set<InodeNumber>, restore: (Set<InodeNumber>) -> Void) throws {
        var left = inodes
        do {
            if inodes.count > syncEachFileAtMost {
                try Disk.syncFileSystem(containing: directory, paths: inodes.sorted().map(path))
                return
            }
            for ino in inodes.sorted() {
                try file(ino, create: false)?.sync()
                left.remove(ino)
            }
        } catch {
            dirtyLock.withLock { restore(left) }
            throw error
        }
    }

    /// Starts writing back every file written since the last checkpoint,
    /// without waiting for the disk.
    func startWriteback() {
        let inodes = dirtyLock.withLock { written }
        for ino in inodes {
            if let file = try? file(ino, create: false) {
                _ = sync_file_range(file.descriptor, 0, 0, UInt32(BATON_SYNC_FILE_RANGE_WRITE))
            }
        }
    }

    /// The files written since the last call (a checkpoint's cut).
    func takeWritten() -> Set<InodeNumber> {
        dirtyLock.withLock {
            defer { written.removeAll() }
            return written
        }
    }

    /// Syncs files a checkpoint's cut took; those not known to be on disk
    /// after a failure go back to `written`, for the next checkpoint.
    func sync(written inodes: Set<InodeNumber>) throws {
        try sync(inodes) { written.formUnion($0) }
        try syncEntries()
    }
}

/// The open data files, shared by mutations and readers: a bounded
/// table behind a lock.
final class OpenFileTable: @unchecked Sendable {
    private static let maxOpenFiles = 4096
    private var table: [InodeNumber: OpenFile] = [:]
    private var mutex = pthread_mutex_t()

    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }

    func get(_ ino: InodeNumber) -> OpenFile? {
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        return table[ino]
    }

    func put(_ ino: InodeNumber, _ file: OpenFile) {
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        if table.count >= Self.maxOpenFiles, let victim = table.keys.first { table.removeValue(forKey: victim) }
        table[ino] = file
    }

    func remove(_ ino: InodeNumber) {
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        table.removeValue(forKey: ino)
    }
}

extension String {
    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
    func trimmingSuffixNewline() -> String { hasSuffix("\n") ? String(dropLast()) : self }
}

/// pthread's reader-writer lock: queries run in parallel, mutations alone.
final class ReadWriteLock: @unchecked Sendable {
    private var lock = pthread_rwlock_t()
    init() { pthread_rwlock_init(&lock, nil) }
    deinit { pthread_rwlock_destroy(&lock) }

    func reading<T>(_ body: () throws -> T) rethrows -> T {
        pthread_rwlock_rdlock(&lock)
        defer { pthread_rwlock_unlock(&lock) }
        return try body()
    }

    func writing<T>(_ body: () throws -> T) rethrows -> T {
        pthread_rwlock_wrlock(&lock)
        defer { pthread_rwlock_unlock(&lock) }
        return try body()
    }
}

/// A plain mutex (the standard library's Mutex needs a newer deployment target on some platforms).
final class PthreadMutex: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}
