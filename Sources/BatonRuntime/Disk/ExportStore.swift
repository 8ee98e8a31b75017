#if canImport(Glibc)
import Glibc
#endif
import BatonCore
import Logging

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

    /// Wraps what the disk threw; a StoreError passes through.
    init(_ error: any Error) {
        switch error {
        case let error as StoreError: self = error
        case let error as SystemCallError: self = .system(error)
        default: preconditionFailure("unexpected error \(error)")
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
        }
    }
}

/// An export's data directory: the journal, the checkpoint and the file data
/// of one export on one node, and the namespace rebuilt from them.
///
///     DIR/export          the export's name (a directory serves one export)
///     DIR/epoch           the epoch this node last served or accepted
///     DIR/checkpoint      the namespace at some journal sequence
///     DIR/journal/N.log   records from sequence N on
///     DIR/files/INO       the contents of regular file INO
///
/// Not thread-safe: the export server calls it from its one export thread;
/// only `read` may be called from other threads.
public final class ExportStore: @unchecked Sendable {
    public struct Limits: Sendable {
        /// Journal bytes after which a checkpoint is taken and older segments are deleted.
        public var checkpointAfterBytes: Int
        public init(checkpointAfterBytes: Int = 256 << 20) { self.checkpointAfterBytes = checkpointAfterBytes }
    }

    public let directory: String
    public let exportName: String
    public private(set) var namespace: Namespace
    public private(set) var epoch: UInt64
    private let limits: Limits
    private let logger: Logger
    private let files: DataFiles
    private var segment: OpenFile
    private var journalBytesSinceCheckpoint = 0

    private var journalDirectory: String { directory + "/journal" }
    private var checkpointPath: String { directory + "/checkpoint" }

    /// Opens (or creates) the data directory and replays checkpoint and journal.
    public init(directory: String, exportName: String, limits: Limits = Limits(), logger: Logger) throws {
        self.directory = directory
        self.exportName = exportName
        self.limits = limits
        self.logger = logger
        do {
            try Disk.makeDirectory(directory)
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
            files = DataFiles(directory: directory + "/files")
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
            try replayJournal()
        } catch {
            throw StoreError(error)
        }
    }

    private func replayJournal() throws {
        let segments = try Disk.list(journalDirectory).filter { $0.hasSuffix(".log") }
        let started = namespace.appliedSequence
        for (index, name) in segments.enumerated() {
            let path = journalDirectory + "/" + name
            let file = try OpenFile(path: path, flags: O_RDWR)
            let bytes = try file.readAll()
            let scan = JournalCodec.scan(bytes)
            for record in scan.records where record.sequence > namespace.appliedSequence {
                guard record.sequence == namespace.appliedSequence + 1 else {
                    throw StoreError.corruptJournal(file: path, offset: 0,
                        reason: "record \(record.sequence) follows \(namespace.appliedSequence): records are missing")
                }
                let outcome = namespace.apply(record)
                try files.carryOut(outcome.effects)
            }
            let isLast = index == segments.count - 1
            switch scan.ending {
            case .clean: break
            case .tornTail(let offset) where isLast:
                logger.warning("dropping a torn record at the end of the journal (never acknowledged)",
                               metadata: ["export": "\(exportName)", "file": "\(path)", "offset": "\(offset)"])
                try file.truncate(to: UInt64(offset))
            case .tornTail(let offset):
                throw StoreError.corruptJournal(file: path, offset: offset, reason: "incomplete record before the last segment")
            case .corrupt(let offset, let reason):
                throw StoreError.corruptJournal(file: path, offset: offset, reason: reason)
            }
            if isLast {
                segment = file
                journalBytesSinceCheckpoint = scan.validBytes
                _ = lseek(file.descriptor, off_t(scan.validBytes), SEEK_SET)
            }
        }
        if segments.isEmpty { try startSegment() }
        logger.info("export opened", metadata: [
            "export": "\(exportName)", "directory": "\(directory)", "epoch": "\(epoch)",
            "sequence": "\(namespace.appliedSequence)", "replayedRecords": "\(namespace.appliedSequence - started)",
            "inodes": "\(namespace.inodeCount)",
        ])
    }

    private func startSegment() throws {
        let name = String(namespace.appliedSequence + 1, radix: 16).leftPadded(to: 16) + ".log"
        segment = try OpenFile(path: journalDirectory + "/" + name, flags: O_WRONLY | O_CREAT | O_APPEND)
        try Disk.syncDirectory(journalDirectory)
    }

    /// Applies a client mutation: stamps it, applies it to the namespace,
    /// appends it to the journal, changes file data. Returns the reply to send.
    public func apply(_ operation: Operation, session: UInt64, requestSequence: UInt64) throws -> Reply {
        let record = JournalRecord(sequence: namespace.appliedSequence + 1, epoch: epoch, time: .now(), session: session,
                                   requestSequence: requestSequence, operation: operation)
        let outcome = namespace.apply(record)
        // Refused mutations are journaled too: their reply is cached, so a re-send answers the same.
        let bytes = JournalCodec.encode(record)
        do {
            try segment.write(bytes)
        } catch {
            throw StoreError.journalWriteFailed(error as! SystemCallError)
        }
        journalBytesSinceCheckpoint += bytes.count
        do {
            try files.carryOut(outcome.effects)
        } catch {
            throw StoreError.journalWriteFailed(error as! SystemCallError)
        }
        if journalBytesSinceCheckpoint >= limits.checkpointAfterBytes {
            try checkpoint()
        }
        return outcome.reply
    }

    /// The client has the replies below `request`: they need not be cached.
    public func forgetReplies(session: UInt64, below request: UInt64) {
        namespace.forgetReplies(session: session, below: request)
    }

    /// Makes every applied mutation durable (the journal is the durable copy of file data).
    public func sync() throws {
        do { try segment.sync() } catch { throw StoreError(error) }
    }

    /// Writes the namespace as a checkpoint and deletes the journal before it.
    public func checkpoint() throws {
        do {
            let started = ContinuousClock.now
            try files.syncDirty()
            let bytes = namespace.checkpoint()
            try Disk.writeAtomically(bytes, to: checkpointPath, directory: directory)
            let old = try Disk.list(journalDirectory).filter { $0.hasSuffix(".log") }
            try startSegment()
            for name in old { try Disk.remove(journalDirectory + "/" + name) }
            journalBytesSinceCheckpoint = 0
            logger.info("checkpoint written", metadata: [
                "export": "\(exportName)", "sequence": "\(namespace.appliedSequence)", "bytes": "\(bytes.count)",
                "segmentsDeleted": "\(old.count)", "duration": "\(ContinuousClock.now - started)",
            ])
        } catch {
            throw StoreError(error)
        }
    }

    /// Reads file data. Safe from any thread as long as `size` came from the namespace.
    public func read(_ ino: InodeNumber, offset: UInt64, count: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try files.read(ino, offset: offset, count: count, into: buffer)
    }

    public func statistics() throws -> FileSystemStatistics {
        let st = try Disk.statfs(directory)
        return FileSystemStatistics(
            blockSize: UInt32(st.f_bsize), totalBlocks: UInt64(st.f_blocks), freeBlocks: UInt64(st.f_bfree),
            availableBlocks: UInt64(st.f_bavail), totalInodes: UInt64(st.f_files),
            freeInodes: UInt64(st.f_ffree), maxNameLength: UInt32(FileName.maxLength))
    }
}

/// The contents of regular files, one local file per inode, named by the
/// export's inode number (so nothing of the local file system leaks out).
final class DataFiles: @unchecked Sendable {
    private let directory: String
    private let lock = NIOLockedFiles()
    private var dirty: Set<InodeNumber> = []

    init(directory: String) { self.directory = directory }

    private func path(_ ino: InodeNumber) -> String { directory + "/" + String(ino, radix: 16) }

    func carryOut(_ effects: [DataEffect]) throws {
        for effect in effects {
            switch effect {
            case .write(let ino, let offset, let data):
                try file(ino, create: true)!.write(data, at: offset)
                dirty.insert(ino)
            case .truncate(let ino, let size):
                try file(ino, create: true)!.truncate(to: size)
                dirty.insert(ino)
            case .remove(let ino):
                lock.remove(ino)
                dirty.remove(ino)
                try Disk.remove(path(ino))
            }
        }
    }

    private func file(_ ino: InodeNumber, create: Bool) throws -> OpenFile? {
        if let open = lock.get(ino) { return open }
        let path = path(ino)
        if !create && !Disk.exists(path) { return nil }
        let open = try OpenFile(path: path, flags: O_RDWR | (create ? O_CREAT : 0))
        lock.put(ino, open)
        return open
    }

    func read(_ ino: InodeNumber, offset: UInt64, count: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let target = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
        let got = try file(ino, create: false)?.read(into: target, at: offset) ?? 0
        // Past the data file's end but within the file's size is a hole: zeros.
        if got < count { target[got...].initializeMemory(as: UInt8.self, repeating: 0) }
        return count
    }

    func syncDirty() throws {
        for ino in dirty.sorted() { try file(ino, create: false)?.sync() }
        dirty.removeAll()
    }
}

/// The open data files, shared by the export thread and readers: a bounded
/// table behind a lock.
final class NIOLockedFiles: @unchecked Sendable {
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
