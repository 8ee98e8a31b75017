#if canImport(Glibc)
import Glibc
#endif

/// One owner per data directory (DESIGN.md §4.7): `DIR/lock`, locked with
/// `flock(LOCK_EX)` by the process that opens the directory (an export
/// server, or an agent for its standby replica) and holding that process's
/// PID as text, for the admin and for an agent that fences a server left
/// running. The kernel releases it when the process ends, however it ends,
/// so a killed owner leaves nothing stale behind. Opened O_CLOEXEC (by
/// `OpenFile`): a process the owner starts never inherits it.
public final class DataDirectoryLock: @unchecked Sendable {
    public static func path(in directory: String) -> String { directory + "/lock" }

    /// Nil once released.
    private var file: OpenFile?

    /// Takes the lock or throws `StoreError.inUse` naming the holder; never waits.
    init(directory: String) throws(StoreError) {
        let path = Self.path(in: directory)
        do {
            let file = try OpenFile(path: path, flags: O_RDWR | O_CREAT)
            guard flock(file.descriptor, LOCK_EX | LOCK_NB) == 0 else {
                guard errno == EWOULDBLOCK else { throw SystemCallError("flock", path: path) }
                throw StoreError.inUse(directory: directory, pid: Self.recordedPID(file))
            }
            try file.truncate(to: 0)
            try file.write(Array("\(getpid())\n".utf8), at: 0)
            self.file = file
        } catch {
            throw StoreError(error)
        }
    }

    /// Gives the directory up at once (closing the descriptor drops the lock).
    func release() { file = nil }

    public enum Holder: Equatable, Sendable {
        case free
        /// `pid` is nil while the new holder has not written it yet.
        case held(pid: Int32?)
    }

    /// Who holds the directory's lock now. A shared try-lock tells: it fails
    /// only while an owner holds the exclusive lock. The PID in the file
    /// alone proves nothing: its process may be long gone and the number reused.
    /// (An opener at that very moment is refused: ask where none is expected,
    /// as an agent does before it takes its exports up.)
    public static func holder(of directory: String) -> Holder {
        guard let file = try? OpenFile(path: path(in: directory), flags: O_RDONLY) else { return .free }
        guard flock(file.descriptor, LOCK_SH | LOCK_NB) != 0 else { return .free }
        return .held(pid: recordedPID(file))
    }

    private static func recordedPID(_ file: OpenFile) -> Int32? {
        (try? file.readAll()).flatMap { Int32(String(decoding: $0, as: UTF8.self).trimmingSuffixNewline()) }
    }
}
