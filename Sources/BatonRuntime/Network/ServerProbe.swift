#if canImport(Glibc)
import Glibc
#endif
import BatonCore

/// Asks one server, with blocking calls, whether it serves an export and is
/// active: the mount's check before it mounts.
public enum ServerProbe {
    public enum Answer: Equatable, Sendable {
        /// With what the server says next: every address of the export, and whether to use MPTCP.
        case active(epoch: UInt64, addresses: [NodeAddress], multipath: Bool)
        case refused(Refusal, detail: String)
    }

    public static func hello(_ address: NodeAddress, export: String, tls: TLSIdentity?, timeoutMilliseconds: Int32 = 2000) throws -> Answer {
        let connection = try BlockingConnection(address, timeoutMilliseconds: timeoutMilliseconds, tls: tls)
        try connection.send(.hello(export: export, session: 0, version: Message.protocolVersion))
        switch try connection.receive(limitBytes: 64 * 1024) {
        case .welcome(let epoch):
            // A server of protocol 2 says the export's addresses at once, in the same write.
            guard case .exportAddresses(let addresses, let multipath) = try? connection.receive(limitBytes: 64 * 1024) else {
                return .active(epoch: epoch, addresses: [], multipath: false)
            }
            return .active(epoch: epoch, addresses: addresses, multipath: multipath)
        case .refused(let refusal, let detail): return .refused(refusal, detail: detail)
        default: throw ProbeError("\(address) answered hello with an unexpected message")
        }
    }
}

public struct ProbeError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
