#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import NIOPosix

/// Multipath TCP (issue 9, DESIGN.md §6): on nodes with two network paths,
/// the long-lived connections (client to server, the server's replication
/// to its standby) are MPTCP connections, so that the kernel carries them
/// over the other path when a NIC or a switch of their first path fails,
/// after one retransmission timeout (about 200 ms), with nothing lost and
/// nothing reconnected. Where a node has one address (loopback, one NIC)
/// they stay plain TCP: MPTCP with one subflow only costs (a quarter of the
/// throughput on loopback here). Where the kernel has no MPTCP
/// (`net.mptcp.enabled` is 0, or an old kernel) they are plain TCP too, and
/// a path fault pauses a connection until a failover moves it.
///
/// The second subflow exists only where the listening node announces its
/// other path's address (`MultipathEndpoints`, set by the agent) and the
/// connecting side accepts announcements (its MPTCP limits).
public enum Multipath {
    /// IPPROTO_MPTCP of Linux.
    public static let protocolNumber: CInt = 262

    /// Whether this process makes MPTCP sockets: where the kernel can, unless
    /// `BATON_MPTCP=0` is in the environment (to compare, or to step around
    /// a kernel that misbehaves). Decided once.
    public static let isAvailable: Bool = {
        if getenv("BATON_MPTCP").map({ String(cString: $0) }) == "0" { return false }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), protocolNumber)
        guard fd >= 0 else { return false }
        close(fd)
        return true
    }()

    /// SOL_MPTCP and MPTCP_INFO of Linux: `MultipathInfo` of a connected socket.
    public static let socketOptionLevel: CInt = 284
    public static let infoOption: CInt = 1

    /// The protocol argument of `socket(2)` for a stream socket: MPTCP when
    /// `wanted` and the kernel has it, else TCP's default.
    public static func streamProtocol(_ wanted: Bool) -> CInt { wanted && isAvailable ? protocolNumber : 0 }
}

/// The head of Linux's `struct mptcp_info` (what MPTCP_INFO fills in; the
/// kernel copies no more than the buffer holds, and an older kernel less
/// than this: the rest stays zero).
public struct MultipathInfo: Sendable {
    private var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    private func byte(_ offset: Int) -> Int { withUnsafeBytes(of: words) { Int($0[offset]) } }

    /// Subflows besides the first (mptcpi_subflows).
    public var extraSubflows: Int { byte(0) }
    /// Addresses the peer announced that this side accepted (mptcpi_add_addr_accepted).
    public var announcedAddressesAccepted: Int { byte(2) }
    /// Every subflow, the first one included while it lives (mptcpi_subflows_total,
    /// Linux 6.10 and later); nil where the kernel does not say.
    public var subflows: Int? { byte(80) == 0 ? nil : byte(80) }
}

extension Multipath {
    /// How often a long-lived connection asks whether it lacks a subflow,
    /// and how often at most it is made again for that.
    public static let subflowCheckInterval = TimeAmount.seconds(5)
    public static let subflowReconnectInterval = TimeAmount.seconds(15)

    /// Whether `channel`, an MPTCP connection, was told another address of
    /// its peer and has no subflow there: made while the peer's other path
    /// was down, the kernel gave that subflow up and does not try again once
    /// the path is back; a later fault of its one path would stall it.
    /// Made again, it gains the subflow if the path is back. False for a
    /// plain TCP connection (the option fails).
    public static func lacksAnnouncedSubflow(_ channel: Channel) -> EventLoopFuture<Bool> {
        info(of: channel) { $0.announcedAddressesAccepted > 0 && $0.extraSubflows == 0 }
    }

    /// Whether `channel`, an MPTCP connection, is down to one subflow though
    /// its peer announced another address: its subflow on the other path is
    /// gone (closed with this node's withdrawn endpoint, `LocalPaths`), or
    /// its first one is (a connection made to the peer's other address).
    /// Asked once this node's link is back, not periodically: during the
    /// fault, one subflow is all there can be.
    public static func isDownToOneSubflow(_ channel: Channel) -> EventLoopFuture<Bool> {
        info(of: channel) { $0.announcedAddressesAccepted > 0 && ($0.extraSubflows == 0 || $0.subflows.map { $0 < 2 } ?? false) }
    }

    /// `holds` of the connection's MPTCP_INFO; false for a plain TCP connection (the option fails).
    private static func info(of channel: Channel, _ holds: @escaping @Sendable (MultipathInfo) -> Bool) -> EventLoopFuture<Bool> {
        guard let provider = channel as? SocketOptionProvider else { return channel.eventLoop.makeSucceededFuture(false) }
        let info: EventLoopFuture<MultipathInfo> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(socketOptionLevel), name: SocketOptionName(infoOption))
        return info.map(holds).recover { _ in false }
    }
}

extension ClientBootstrap {
    /// With `wanted`, an MPTCP connection where the kernel has MPTCP (see
    /// `Multipath`). Call it before setting TCP options: NIO drops TCP_NODELAY here.
    public func multipath(_ wanted: Bool) -> ClientBootstrap { enableMPTCP(wanted && Multipath.isAvailable) }
}

extension ServerBootstrap {
    /// With `wanted`, MPTCP listening sockets where the kernel has MPTCP;
    /// plain TCP clients are accepted all the same.
    public func multipath(_ wanted: Bool) -> ServerBootstrap { enableMPTCP(wanted && Multipath.isAvailable) }
}
