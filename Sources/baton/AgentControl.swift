import BatonCore
import BatonServer
import Dispatch
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The commands of the agent that started this server (`ServerControl`),
/// read from stdin on their own thread, and the server's reports to it
/// (`ServerReport`), written to stdout.
///
/// DESIGN.md §4.7: an export server does not outlive its agent. The agent
/// holds the other end of stdin and never closes it while this server is to
/// run, so its end means the agent is gone: the server exits at once, as a
/// kill -9 would end it (the journal is written ahead: nothing acknowledged
/// is lost). Its agent, started again, serves the export or takes the
/// standby role, and a server left here would serve on at the old epoch
/// beside the cluster's.
///
/// Why not prctl(PR_SET_PDEATHSIG): the signal fires when the *thread* that
/// started the child ends, not its process, and the agent starts servers
/// from short-lived threads (a swap's, a restart's); and it is set between
/// fork and exec, which Foundation's Process gives no hook for. The end of a
/// pipe comes with the last process holding it, whatever ends it.
final class AgentControl: @unchecked Sendable {
    private let export: String
    private let logger: Logger
    private let awaitsPromotion: Bool
    private let lock = NSLock()
    private var server: ExportServer?
    private var withoutStandby = false
    /// The go-ahead (`alone` or not), once it came.
    private var promotion: Bool?
    private let promotionDecided = DispatchSemaphore(value: 0)

    init(export: String, awaitsPromotion: Bool, logger: Logger) {
        self.export = export
        self.awaitsPromotion = awaitsPromotion
        self.logger = logger
        Thread.detachNewThread { [self] in readCommands() }
    }

    /// Blocks until the agent's go-ahead: whether to serve without waiting
    /// for a standby; nil when the agent went away (or handed over) instead.
    func waitForPromotion() -> Bool? {
        promotionDecided.wait()
        return lock.withLock { promotion }
    }

    /// The server that commands from now on act on.
    func attach(_ server: ExportServer) {
        let alone = lock.withLock { () -> Bool in
            self.server = server
            return withoutStandby
        }
        if alone { server.continueWithoutStandby() }
    }

    private func readCommands() {
        while true {
            let command: ServerControl
            do {
                guard let frame = try readFrame() else { return agentGone() }
                command = try frame.withUnsafeBytes { bytes throws(DecodeError) in try ServerControl.decode(bytes) }
            } catch {
                logger.critical("a command on stdin is not the agent's: exiting", metadata: [
                    "export": "\(export)", "error": "\(error)",
                    "action": "only the node's agent may start this server; it starts the export again",
                ])
                Glibc._exit(4)
            }
            handle(command)
        }
    }

    private func handle(_ command: ServerControl) {
        switch command {
        case .promote(let alone):
            let first = lock.withLock { () -> Bool in
                guard awaitsPromotion, promotion == nil else { return false }
                promotion = alone
                return true
            }
            if first { promotionDecided.signal() } else { logger.warning("a go-ahead it did not wait for: ignored", metadata: ["export": "\(export)"]) }
        case .continueWithoutStandby:
            let server = lock.withLock { () -> ExportServer? in
                withoutStandby = true
                return self.server
            }
            server?.continueWithoutStandby()
        case .answerAlone(let oldest):
            lock.withLock { server }?.answerAlone(oldestWaiting: oldest)
        case .pathRestored:
            lock.withLock { server }?.pathRestored()
        case .handOver:
            guard let server = lock.withLock({ server }) else {
                logger.info("handed over before serving: stopping", metadata: ["export": "\(export)"])
                Glibc.exit(0)
            }
            let drained = server.drainForHandOver(timeout: .seconds(2))
            if drained {
                logger.info("handed over: the standby has every record", metadata: ["export": "\(export)"])
            } else {
                logger.error("hand-over: the standby did not acknowledge every record within 2 s", metadata: [
                    "export": "\(export)", "action": "none: what it lacks was answered in async mode only",
                ])
            }
            Glibc.exit(drained ? 0 : 3)
        }
    }

    private let reportLock = NSLock()

    /// Tells the agent: one whole frame on stdout at a time (reports come
    /// from the main thread and from the server's event loops).
    func report(_ report: ServerReport) {
        let frame = report.frame()
        reportLock.withLock {
            var written = 0
            while written < frame.count {
                let count = frame.withUnsafeBytes { Glibc.write(STDOUT_FILENO, $0.baseAddress! + written, frame.count - written) }
                if count < 0, errno == EINTR { continue }
                // The agent is gone: the end of stdin says so and stops this server.
                guard count > 0 else { return }
                written += count
            }
        }
    }

    private func agentGone() {
        let waiting = lock.withLock { awaitsPromotion && promotion == nil }
        if waiting {
            promotionDecided.signal()
            return
        }
        logger.warning("the agent that started this server is gone (the end of stdin): exiting", metadata: [
            "export": "\(export)", "pid": "\(getpid())",
            "action": "none: the node's agent, when it starts, serves the export or keeps its standby replica",
        ])
        Glibc._exit(4)
    }

    /// One frame's bytes from stdin; nil at its end.
    private func readFrame() throws -> [UInt8]? {
        guard let header = try read(count: 4) else { return nil }
        let length = Int(UInt32(header[0]) | UInt32(header[1]) << 8 | UInt32(header[2]) << 16 | UInt32(header[3]) << 24)
        guard (1...ServerControl.maxFrameBytes).contains(length) else {
            throw DecodeError.invalid("a command of \(length) bytes (at most \(ServerControl.maxFrameBytes))")
        }
        guard let frame = try read(count: length) else { return nil }
        return frame
    }

    private func read(count: Int) throws -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let got = bytes.withUnsafeMutableBytes { Glibc.read(STDIN_FILENO, $0.baseAddress! + filled, count - filled) }
            if got < 0, errno == EINTR { continue }
            if got <= 0 { return nil }
            filled += got
        }
        return bytes
    }
}
