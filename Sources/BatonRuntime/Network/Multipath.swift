#if canImport(Glibc)
import Glibc
#endif
import NIOPosix

/// Multipath TCP (issue 9, DESIGN.md §6): every stream connection of Baton
/// (client to server, replication, agent requests, admin) is one MPTCP
/// connection, so that the kernel carries it over the other network path
/// when a NIC or a switch of its first path fails, after one retransmission
/// timeout (about 200 ms), with nothing lost and nothing reconnected. Where
/// the kernel has no MPTCP (`net.mptcp.enabled` is 0, or an old kernel) the
/// sockets are plain TCP, and a path fault pauses a connection until a
/// failover or a reconnection moves it.
///
/// The second subflow exists only where the listening node announces its
/// other path's address (`MultipathEndpoints`, set by the agent) and the
/// connecting side accepts announcements (its MPTCP limits).
public enum Multipath {
    /// IPPROTO_MPTCP of Linux.
    public static let protocolNumber: CInt = 262

    /// Whether this process can make MPTCP sockets: tried once.
    public static let isAvailable: Bool = {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), protocolNumber)
        guard fd >= 0 else { return false }
        close(fd)
        return true
    }()

    /// The protocol argument of `socket(2)` for a stream socket: MPTCP where there is one, else TCP's default.
    public static var streamProtocol: CInt { isAvailable ? protocolNumber : 0 }
}

extension ClientBootstrap {
    /// An MPTCP connection where the kernel has MPTCP (see `Multipath`).
    public func multipath() -> ClientBootstrap { enableMPTCP(Multipath.isAvailable) }
}

extension ServerBootstrap {
    /// MPTCP listening sockets where the kernel has MPTCP; plain TCP clients are accepted all the same.
    public func multipath() -> ServerBootstrap { enableMPTCP(Multipath.isAvailable) }
}
