import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Limits on the connections a listener takes (an export server's clients,
/// an agent's peers and admins), so that no one connecting, however it
/// behaves, stops the process or starves the others (DESIGN.md §4.6):
/// admitted connections (a client's hello, an agent session's
/// authentication) at most `maxClients`; connections not admitted yet
/// (half-open) at most `maxHalfOpen`, the oldest closed to make room (a flood
/// of them cannot keep a real client out, which says hello at once), and
/// each closed after `helloTimeout`. An export server also stops reading
/// from a client that does not read its answers (see `ClientConnectionHandler`).
/// Each limit hit is a log line, at most one per limit every 10 s.
public final class ConnectionAdmission: @unchecked Sendable {
    public struct Limits: Sendable {
        public var maxClients = 1024
        public var maxHalfOpen = 64
        public var helloTimeout = TimeAmount.seconds(10)
        /// Answers queued to a client past this stop reading its requests
        /// until they drain below `resumeBelowBytes`.
        public var maxUnsentBytes = 8 << 20
        public var resumeBelowBytes = 1 << 20

        public init() {}

        /// For an export server's monitor port: one monitor, or a few while
        /// a new one replaces the old; the rest room for probing tools.
        public static var monitor: Limits {
            var limits = Limits()
            limits.maxClients = 64
            limits.maxHalfOpen = 16
            return limits
        }
    }

    public let limits: Limits
    private let logger: Logger
    /// Names the listener in log lines: `["export": "demo"]`, `["node": "a"]`.
    private let subject: Logger.Metadata
    private struct State {
        var halfOpen: [ObjectIdentifier: Channel] = [:]
        var halfOpenOrder: [ObjectIdentifier] = []
        var clients = 0
        var lastLogged: [String: NIODeadline] = [:]
    }
    private let state = NIOLockedValueBox(State())

    public init(limits: Limits = Limits(), subject: Logger.Metadata, logger: Logger) {
        self.limits = limits
        self.subject = subject
        self.logger = logger
    }

    /// A new connection: half-open until its hello.
    public func accepted(_ channel: Channel) {
        let id = ObjectIdentifier(channel)
        let evicted = state.withLockedValue { state -> Channel? in
            state.halfOpen[id] = channel
            state.halfOpenOrder.append(id)
            guard state.halfOpen.count > limits.maxHalfOpen else { return nil }
            while let oldest = state.halfOpenOrder.first {
                state.halfOpenOrder.removeFirst()
                if let channel = state.halfOpen.removeValue(forKey: oldest) { return channel }
            }
            return nil
        }
        if let evicted {
            logHit("half-open", "connections without a hello over the limit: closing the oldest", [
                "limit": "\(limits.maxHalfOpen)", "closed": "\(evicted.remoteAddress.map { "\($0)" } ?? "?")",
            ])
            evicted.close(promise: nil)
        }
    }

    /// Its hello came: a client, if there is room for one.
    public func welcome(_ channel: Channel) -> Bool {
        let admitted = state.withLockedValue { state -> Bool in
            let id = ObjectIdentifier(channel)
            state.halfOpen.removeValue(forKey: id)
            state.halfOpenOrder.removeAll { $0 == id }
            guard state.clients < limits.maxClients else { return false }
            state.clients += 1
            return true
        }
        if !admitted {
            logHit("clients", "client connections over the limit: refusing one", [
                "limit": "\(limits.maxClients)", "peer": "\(channel.remoteAddress.map { "\($0)" } ?? "?")",
            ])
        }
        return admitted
    }

    /// Clients welcomed and still connected.
    public var clientCount: Int { state.withLockedValue { $0.clients } }

    /// The connection closed; `welcomed`: it was counted as a client.
    public func closed(_ channel: Channel, welcomed: Bool) {
        state.withLockedValue { state in
            let id = ObjectIdentifier(channel)
            if state.halfOpen.removeValue(forKey: id) != nil { state.halfOpenOrder.removeAll { $0 == id } }
            if welcomed { state.clients -= 1 }
        }
    }

    public func logHit(_ limit: String, _ message: String, _ metadata: Logger.Metadata) {
        let now = NIODeadline.now()
        let due = state.withLockedValue { state -> Bool in
            if let last = state.lastLogged[limit], now - last < .seconds(10) { return false }
            state.lastLogged[limit] = now
            return true
        }
        guard due else { return }
        var metadata = metadata.merging(subject) { $1 }
        metadata["action"] = metadata["action"] ?? "none: the process goes on; check the peers named if this repeats"
        logger.warning("\(message)", metadata: metadata)
    }
}
