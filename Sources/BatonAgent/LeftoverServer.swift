import BatonRuntime
import CLinuxExtras
import Foundation
import Logging

/// DESIGN.md §4.7 when an agent starts: an export server of this node that
/// outlived its agent still holds the export's data directory. Servers end
/// with the agent that started them (the end of their stdin), but one that
/// was stopped (SIGSTOP) at the time, or one started by hand, serves on at
/// an epoch the cluster may have left behind; the agent could neither open
/// the directory nor bind the export's address, and the next fence would
/// reach an agent that does not know it. So the agent fences it first (the
/// lock file names it), then takes the export up as usual.
enum LeftoverServer {
    /// For the holder's PID to be written, and for the fenced server to exit.
    static let deadline: Duration = .seconds(5)

    static func fence(export: String, directory: String, node: String, logger: Logger) {
        let clock = ContinuousClock()
        let started = clock.now
        var metadata: Logger.Metadata = ["export": "\(export)", "node": "\(node)", "directory": "\(directory)"]
        guard let pid = holderPID(directory, until: started + deadline) else { return }
        metadata["pid"] = "\(pid)"
        // A pidfd: the signal and the wait reach this process, never another that got its PID later.
        let process = pidfd_open(pid, 0)
        guard process >= 0 else {
            // ESRCH: it ended since; its lock went with it.
            if errno == ESRCH { return }
            metadata["error"] = "\(SystemCallError("pidfd_open", path: "/proc/\(pid)"))"
            metadata["action"] = "stop process \(pid) by hand, then restart this agent"
            return logger.critical("cannot fence the process that holds the data directory", metadata: metadata)
        }
        defer { close(process) }
        // What /proc says is the pidfd's process's if it is still running afterwards.
        let server = isServer(pid, of: directory)
        if hasExited(process, waitingUntil: clock.now) { return }
        guard server else {
            metadata["action"] = .string("not fenced: it is not a 'baton serve' of this data directory (see /proc/\(pid)/cmdline); "
                + "stop it, then restart this agent")
            return logger.critical("the data directory of the export is held by another process", metadata: metadata)
        }
        guard pidfd_send_signal(process, SIGKILL, nil, 0) == 0 || errno == ESRCH,
              hasExited(process, waitingUntil: clock.now + deadline) else {
            metadata["action"] = .string("SIGKILL sent, but it did not exit within \(deadline) (a process in uninterruptible IO?); "
                + "the export is not taken up here until it has: restart this agent then")
            return logger.critical("an export server left running did not exit when fenced", metadata: metadata)
        }
        metadata["duration"] = "\(clock.now - started)"
        metadata["action"] = "killed (SIGKILL): the export is taken up as usual"
        logger.warning("fenced an export server left running by an earlier agent", metadata: metadata)
    }

    /// The PID recorded by the process that holds the directory's lock; nil
    /// when none holds it. A new holder writes its PID right after it takes
    /// the lock: waits for it, up to `deadline`.
    private static func holderPID(_ directory: String, until deadline: ContinuousClock.Instant) -> Int32? {
        while true {
            switch DataDirectoryLock.holder(of: directory) {
            case .free: return nil
            case .held(let pid?): return pid
            case .held(nil) where ContinuousClock.now >= deadline: return nil
            case .held(nil): Thread.sleep(forTimeInterval: 0.005)
            }
        }
    }

    /// Whether `pid` runs `baton serve` with `--data` naming `directory` (a
    /// relative path is resolved in the process's working directory).
    static func isServer(_ pid: Int32, of directory: String) -> Bool {
        guard let bytes = try? OpenFile(path: "/proc/\(pid)/cmdline", flags: O_RDONLY).readAll() else { return false }
        let arguments = bytes.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard arguments.count > 1, arguments[0].split(separator: "/").last == "baton", arguments[1] == "serve" else { return false }
        var data: String?
        for (index, argument) in arguments.enumerated() {
            if argument == "--data", index + 1 < arguments.count { data = arguments[index + 1] }
            if argument.hasPrefix("--data=") { data = String(argument.dropFirst("--data=".count)) }
        }
        guard let data else { return false }
        let path = data.hasPrefix("/") ? data : "/proc/\(pid)/cwd/" + data
        guard let resolved = realPath(path) else { return false }
        return resolved == realPath(directory)
    }

    private static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// Waits until the pidfd's process has exited (it becomes readable), up
    /// to `deadline`; a deadline already past only looks.
    private static func hasExited(_ process: Int32, waitingUntil deadline: ContinuousClock.Instant) -> Bool {
        var entry = pollfd(fd: process, events: Int16(POLLIN), revents: 0)
        while true {
            let (seconds, attoseconds) = max(.zero, deadline - ContinuousClock.now).components
            let result = poll(&entry, 1, Int32(seconds * 1000 + attoseconds / 1_000_000_000_000_000))
            if result > 0 { return true }
            if result == 0 { return false }
            if errno != EINTR { return false }
        }
    }
}
