#if canImport(Glibc)
import Glibc
#endif
import BatonCore

/// Asks one server, with plain blocking sockets, whether it serves an export
/// and is active. Used before a mount forks into the background: SwiftNIO and
/// Dispatch must not run before a fork, so this touches neither.
public enum ServerProbe {
    public enum Answer: Equatable, Sendable {
        case active(epoch: UInt64)
        case refused(Refusal, detail: String)
    }

    public static func hello(_ address: NodeAddress, export: String, timeoutMilliseconds: Int32 = 2000) throws -> Answer {
        let connection = try BlockingConnection(address, timeoutMilliseconds: timeoutMilliseconds)
        try connection.send(.hello(export: export, session: 0, version: Message.protocolVersion))
        switch try connection.receive(limitBytes: 64 * 1024) {
        case .welcome(let epoch): return .active(epoch: epoch)
        case .refused(let refusal, let detail): return .refused(refusal, detail: detail)
        default: throw ProbeError("\(address) answered hello with an unexpected message")
        }
    }
}

public struct ProbeError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
