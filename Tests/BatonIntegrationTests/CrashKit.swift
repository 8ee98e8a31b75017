// The crash-consistency kit: records what a run does to a data directory at
// the system call seam (`Disk.recorder`), replays it into a model of a disk
// that knows what each fsync made durable, and builds the directories a
// power cut could leave. The model is in CrashStateTests.swift's header.
import BatonCore
@testable import BatonRuntime
import Foundation
import XCTest

/// Collects the operations on paths under `root`, in the order they returned.
final class DiskLog: DiskRecorder, @unchecked Sendable {
    let root: String
    private let lock = NSLock()
    private var recorded: [DiskOperation] = []

    init(root: String) { self.root = root }

    func record(_ operation: DiskOperation) {
        guard operation.paths.contains(where: { $0 == root || $0.hasPrefix(root + "/") }) else { return }
        lock.withLock { recorded.append(operation) }
    }

    var operations: [DiskOperation] { lock.withLock { recorded } }
    var count: Int { lock.withLock { recorded.count } }

    /// Records what `body` does to the disk; the recorder is cleared also when it throws.
    func recording<T>(_ body: () throws -> T) rethrows -> T {
        Disk.recorder = self
        defer { Disk.recorder = nil }
        return try body()
    }
}

extension DiskOperation {
    var paths: [String] {
        switch self {
        case .open(let path, _, _), .write(let path, _, _), .truncate(let path, _), .preallocate(let path, _),
             .sync(let path), .remove(let path), .makeDirectory(let path), .removeDirectory(let path):
            [path]
        case .rename(let from, let to): [from, to]
        }
    }

    var summary: String {
        switch self {
        case .open(let path, let created, let truncated): "open \(path)\(created ? " (created)" : "")\(truncated ? " (truncated)" : "")"
        case .write(let path, let offset, let bytes): "write \(path) [\(offset), +\(bytes.count))"
        case .truncate(let path, let size): "ftruncate \(path) to \(size)"
        case .preallocate(let path, let bytes): "fallocate \(path) \(bytes)"
        case .sync(let path): "sync \(path)"
        case .remove(let path): "unlink \(path)"
        case .makeDirectory(let path): "mkdir \(path)"
        case .removeDirectory(let path): "rmdir \(path)"
        case .rename(let from, let to): "rename \(from) to \(to)"
        }
    }
}

/// A file's bytes as sparse 4 KiB pages (an absent page reads as zeros), so
/// a preallocated journal segment costs only what was written in it.
struct FileImage: Equatable {
    static let pageBytes = 4096
    var size: UInt64 = 0
    var pages: [UInt64: [UInt8]] = [:]

    static func pagesTouched(offset: UInt64, count: Int) -> ClosedRange<UInt64>? {
        guard count > 0 else { return nil }
        return offset / UInt64(pageBytes)...(offset + UInt64(count) - 1) / UInt64(pageBytes)
    }

    mutating func write(_ bytes: [UInt8], at offset: UInt64) {
        guard let touched = Self.pagesTouched(offset: offset, count: bytes.count) else { return }
        for page in touched {
            let pageStart = page * UInt64(Self.pageBytes)
            let from = max(offset, pageStart), to = min(offset + UInt64(bytes.count), pageStart + UInt64(Self.pageBytes))
            var content = pages[page] ?? [UInt8](repeating: 0, count: Self.pageBytes)
            content.replaceSubrange(Int(from - pageStart)..<Int(to - pageStart), with: bytes[Int(from - offset)..<Int(to - offset)])
            pages[page] = content
        }
        size = max(size, offset + UInt64(bytes.count))
    }

    /// ftruncate: bytes past the new size are gone (a later growth reads zeros there).
    mutating func resize(to newSize: UInt64) {
        let lastPage = newSize / UInt64(Self.pageBytes)
        for page in pages.keys where page > lastPage || (page == lastPage && newSize % UInt64(Self.pageBytes) == 0) {
            pages.removeValue(forKey: page)
        }
        let tail = Int(newSize % UInt64(Self.pageBytes))
        if tail > 0, var content = pages[lastPage] {
            content.replaceSubrange(tail..., with: repeatElement(0, count: Self.pageBytes - tail))
            pages[lastPage] = content
        }
        size = newSize
    }

    func bytes() -> [UInt8] {
        var all = [UInt8](repeating: 0, count: Int(size))
        for (page, content) in pages {
            let start = Int(page) * Self.pageBytes
            guard start < all.count else { continue }
            let end = min(all.count, start + Self.pageBytes)
            all.replaceSubrange(start..<end, with: content[0..<(end - start)])
        }
        return all
    }
}

/// A change to a file that no fsync has made durable yet.
enum FileChange {
    case write(offset: UInt64, bytes: [UInt8])
    case resize(UInt64)
    /// posix_fallocate from 0: the size grows to at least this.
    case grow(UInt64)

    func apply(to image: inout FileImage) {
        switch self {
        case .write(let offset, let bytes): image.write(bytes, at: offset)
        case .resize(let size): image.resize(to: size)
        case .grow(let size): if size > image.size { image.size = size }
        }
    }

    /// The pages whose content this change sets (a truncation zeroes the tail of one).
    func pages(sizeBefore: UInt64) -> [UInt64] {
        switch self {
        case .write(let offset, let bytes): FileImage.pagesTouched(offset: offset, count: bytes.count).map(Array.init) ?? []
        case .resize(let size) where size < sizeBefore && size % UInt64(FileImage.pageBytes) != 0: [size / UInt64(FileImage.pageBytes)]
        case .resize, .grow: []
        }
    }
}

enum DiskNode: Equatable {
    case file(Int)
    case directory(Int)
}

/// A change to a directory's entries that no directory fsync has made durable yet.
/// A rename moves one node atomically; it is durable once its destination directory is synced.
enum EntryChange {
    case set(directory: Int, name: String, node: DiskNode)
    case remove(directory: Int, name: String)
    case rename(fromDirectory: Int, fromName: String, toDirectory: Int, toName: String, node: DiskNode)

    /// The directory whose fsync makes this change durable.
    var syncedBy: Int {
        switch self {
        case .set(let directory, _, _), .remove(let directory, _): directory
        case .rename(_, _, let toDirectory, _, _): toDirectory
        }
    }

    func apply(to entries: inout [Int: [String: DiskNode]]) {
        switch self {
        case .set(let directory, let name, let node): entries[directory, default: [:]][name] = node
        case .remove(let directory, let name): entries[directory]?.removeValue(forKey: name)
        case .rename(let fromDirectory, let fromName, let toDirectory, let toName, let node):
            entries[fromDirectory]?.removeValue(forKey: fromName)
            entries[toDirectory, default: [:]][toName] = node
        }
    }

    /// `directories`: each directory's path under the data directory, "" or ending in "/".
    func summary(_ directories: [Int: String]) -> String {
        switch self {
        case .set(let directory, let name, _): "entry \(directories[directory] ?? "?/")\(name)"
        case .remove(let directory, let name): "removal of \(directories[directory] ?? "?/")\(name)"
        case .rename(let from, let fromName, let to, let toName, _):
            "rename \(directories[from] ?? "?/")\(fromName) -> \(directories[to] ?? "?/")\(toName)"
        }
    }
}

/// What one crash state keeps of the changes no fsync made durable: per
/// file, the moment (index into its pending changes, 0 = none) whose size
/// stands and each dirty page's moment; per pending entry change, whether
/// it happened.
struct CrashChoice {
    var sizeMoment: [Int: Int] = [:]
    var pageMoment: [Int: [UInt64: Int]] = [:]
    var entriesKept: [Bool] = []
}

/// How a crash state picks among the changes no fsync made durable.
enum CrashStyle: CustomStringConvertible {
    /// Nothing unsynced reached the disk: only what fsyncs made durable.
    case syncedOnly
    /// Everything reached the disk (as a clean stop would leave it).
    case everything
    /// Each file as it was at a random moment since its last sync, the write
    /// after that moment torn at a page boundary (a prefix of its pages on
    /// disk), the size at any moment; each entry change or not.
    case randomInWriteOrder
    /// Any subset: each dirty page at any moment since its last sync (pages
    /// reach the disk in any order), the size at any moment, each entry change or not.
    case random

    var description: String {
        switch self {
        case .syncedOnly: "only synced changes"
        case .everything: "every change"
        case .randomInWriteOrder: "a random subset of unsynced changes, pages in write order"
        case .random: "a random subset of unsynced changes, pages in any order"
        }
    }
}

/// The disk as the recorded run left it: for each file and directory what is
/// durable and what is pending since its last fsync, and the volatile view
/// (what the running process saw) to resolve paths.
struct CrashDisk {
    struct FileState {
        var durable = FileImage()
        var volatile = FileImage()
        var pending: [FileChange] = []
    }

    let root: String
    private(set) var files: [Int: FileState] = [:]
    /// Durable and volatile entries of each directory; directory 0 is `root`.
    private(set) var durableEntries: [Int: [String: DiskNode]] = [0: [:]]
    private(set) var volatileEntries: [Int: [String: DiskNode]] = [0: [:]]
    private(set) var pendingEntries: [EntryChange] = []
    private var nextID = 1

    /// `root` exists durably before the run (the admin's directory); its
    /// contents at that time are not modelled, so the run starts with it empty.
    init(root: String) { self.root = root }

    private func resolve(_ path: String) -> (directory: Int, name: String) {
        precondition(path.hasPrefix(root + "/"), "\(path) is outside \(root)")
        var components = path.dropFirst(root.count + 1).split(separator: "/").map(String.init)
        let name = components.removeLast()
        var directory = 0
        for component in components {
            guard case .directory(let id)? = volatileEntries[directory]?[component] else {
                preconditionFailure("\(path): \(component) is not a directory")
            }
            directory = id
        }
        return (directory, name)
    }

    private func node(_ path: String) -> DiskNode? {
        if path == root { return .directory(0) }
        let (directory, name) = resolve(path)
        return volatileEntries[directory]?[name]
    }

    private mutating func change(_ path: String, _ change: FileChange) {
        guard case .file(let id)? = node(path) else { preconditionFailure("\(path) is not a file") }
        change.apply(to: &files[id]!.volatile)
        files[id]!.pending.append(change)
    }

    private mutating func changeEntries(_ change: EntryChange) {
        change.apply(to: &volatileEntries)
        pendingEntries.append(change)
    }

    private mutating func newID() -> Int {
        defer { nextID += 1 }
        return nextID
    }

    mutating func apply(_ operation: DiskOperation) {
        switch operation {
        case .open(let path, let created, let truncated):
            if created {
                let id = newID()
                files[id] = FileState()
                let (directory, name) = resolve(path)
                changeEntries(.set(directory: directory, name: name, node: .file(id)))
            }
            if truncated { change(path, .resize(0)) }
        case .write(let path, let offset, let bytes): change(path, .write(offset: offset, bytes: bytes))
        case .truncate(let path, let size): change(path, .resize(size))
        case .preallocate(let path, let bytes): change(path, .grow(bytes))
        case .sync(let path):
            switch node(path) {
            case .file(let id)?:
                files[id]!.durable = files[id]!.volatile
                files[id]!.pending = []
            case .directory(let id)?:
                for change in pendingEntries where change.syncedBy == id { change.apply(to: &durableEntries) }
                pendingEntries.removeAll { $0.syncedBy == id }
            case nil:
                preconditionFailure("sync of \(path), which does not exist")
            }
        case .remove(let path), .removeDirectory(let path):
            let (directory, name) = resolve(path)
            changeEntries(.remove(directory: directory, name: name))
        case .makeDirectory(let path):
            let id = newID()
            durableEntries[id] = [:]
            volatileEntries[id] = [:]
            let (directory, name) = resolve(path)
            changeEntries(.set(directory: directory, name: name, node: .directory(id)))
        case .rename(let from, let to):
            guard let moved = node(from) else { preconditionFailure("rename of \(from), which does not exist") }
            let source = resolve(from), destination = resolve(to)
            changeEntries(.rename(fromDirectory: source.directory, fromName: source.name,
                                  toDirectory: destination.directory, toName: destination.name, node: moved))
        }
    }

    /// Picks, for `style`, what of the pending changes a crash state keeps.
    func choose(_ style: CrashStyle, using random: inout some RandomNumberGenerator) -> CrashChoice {
        var choice = CrashChoice()
        for (id, state) in files.sorted(by: { $0.key < $1.key }) where !state.pending.isEmpty {
            let count = state.pending.count
            var moments: [UInt64: [Int]] = [:]
            var size = state.durable.size
            for (index, change) in state.pending.enumerated() {
                for page in change.pages(sizeBefore: size) { moments[page, default: []].append(index + 1) }
                var image = FileImage(size: size)
                change.apply(to: &image)
                size = image.size
            }
            switch style {
            case .syncedOnly:
                choice.pageMoment[id] = moments.mapValues { _ in 0 }
            case .everything:
                choice.sizeMoment[id] = count
                choice.pageMoment[id] = moments.mapValues { $0.last! }
            case .randomInWriteOrder:
                choice.sizeMoment[id] = Int.random(in: 0...count, using: &random)
                let moment = Int.random(in: 0...count, using: &random)
                var pages = moments.mapValues { at in at.last(where: { $0 <= moment }) ?? 0 }
                let torn = moments.filter { $0.value.contains(moment + 1) }.keys.sorted()
                for page in torn.prefix(Int.random(in: 0...torn.count, using: &random)) { pages[page] = moment + 1 }
                choice.pageMoment[id] = pages
            case .random:
                choice.sizeMoment[id] = Int.random(in: 0...count, using: &random)
                choice.pageMoment[id] = Dictionary(uniqueKeysWithValues: moments.sorted(by: { $0.key < $1.key }).map { page, at in
                    (page, ([0] + at).randomElement(using: &random)!)
                })
            }
        }
        choice.entriesKept = pendingEntries.map { _ in
            switch style {
            case .syncedOnly: false
            case .everything: true
            case .random, .randomInWriteOrder: Bool.random(using: &random)
            }
        }
        return choice
    }

    /// The file as the crash left it: the durable image, each chosen page as
    /// it was at its moment, the size as it was at its moment.
    func image(of id: Int, _ choice: CrashChoice) -> FileImage {
        let state = files[id]!
        let sizeMoment = choice.sizeMoment[id] ?? 0
        let pageMoment = choice.pageMoment[id] ?? [:]
        guard sizeMoment > 0 || !pageMoment.isEmpty else { return state.durable }
        var result = state.durable
        var running = state.durable
        var size = running.size
        let byMoment = Dictionary(grouping: pageMoment.keys, by: { pageMoment[$0]! })
        for (index, change) in state.pending.enumerated() {
            change.apply(to: &running)
            if index + 1 == sizeMoment { size = running.size }
            for page in byMoment[index + 1] ?? [] { result.pages[page] = running.pages[page] }
        }
        // Bytes past the size that stands are not part of the file.
        result.resize(to: size)
        return result
    }

    /// The directory entries as the crash left them.
    func entries(_ choice: CrashChoice) -> [Int: [String: DiskNode]] {
        var entries = durableEntries
        for (change, kept) in zip(pendingEntries, choice.entriesKept) where kept { change.apply(to: &entries) }
        return entries
    }

    /// Writes the crash state into `target` (which exists and is empty).
    func materialise(_ choice: CrashChoice, into target: String) throws {
        let entries = entries(choice)
        func fill(_ directory: Int, at path: String) throws {
            for (name, node) in entries[directory] ?? [:] {
                let child = path + "/" + name
                switch node {
                case .directory(let id):
                    try FileManager.default.createDirectory(atPath: child, withIntermediateDirectories: false)
                    try fill(id, at: child)
                case .file(let id):
                    let image = image(of: id, choice)
                    let fd = open(child, O_WRONLY | O_CREAT | O_EXCL, 0o600)
                    guard fd >= 0 else { throw SystemCallError("open", path: child) }
                    defer { close(fd) }
                    guard ftruncate(fd, off_t(image.size)) == 0 else { throw SystemCallError("ftruncate", path: child) }
                    for (page, content) in image.pages {
                        let start = page * UInt64(FileImage.pageBytes)
                        let count = Int(min(UInt64(FileImage.pageBytes), image.size - min(image.size, start)))
                        guard count > 0 else { continue }
                        guard content.withUnsafeBytes({ pwrite(fd, $0.baseAddress!, count, off_t(start)) }) == count else {
                            throw SystemCallError("pwrite", path: child)
                        }
                    }
                }
            }
        }
        try fill(0, at: target)
    }

    /// What the choice kept of the pending changes, for a failing state's report.
    func describe(_ choice: CrashChoice) -> String {
        var lines: [String] = []
        var paths: [Int: String] = [:]
        var directories: [Int: String] = [0: ""]
        func walk(_ directory: Int, _ prefix: String) {
            for (name, node) in volatileEntries[directory] ?? [:] {
                switch node {
                case .file(let id): paths[id] = prefix + name
                case .directory(let id):
                    directories[id] = prefix + name + "/"
                    walk(id, prefix + name + "/")
                }
            }
        }
        walk(0, "")
        for (id, state) in files.sorted(by: { $0.key < $1.key }) where !state.pending.isEmpty {
            let pages = (choice.pageMoment[id] ?? [:]).sorted { $0.key < $1.key }
            let kept = pages.filter { $0.value > 0 }.map { "\($0.key)@\($0.value)" }
            lines.append("  \(paths[id] ?? "file \(id) (unlinked)"): \(state.pending.count) unsynced changes, size as after "
                         + "\(choice.sizeMoment[id] ?? 0), pages kept [\(kept.joined(separator: " "))] of \(pages.count) dirty")
        }
        for (change, kept) in zip(pendingEntries, choice.entriesKept) {
            lines.append("  \(change.summary(directories)): \(kept ? "happened" : "lost")")
        }
        return lines.isEmpty ? "  nothing was unsynced" : lines.joined(separator: "\n")
    }
}

/// A state's choices follow from the seed and its number alone.
typealias SeededRandom = SplitMix64
