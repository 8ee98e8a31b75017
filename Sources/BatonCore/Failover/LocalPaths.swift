/// The links under this node's own path addresses (issue 9; the agent
/// watches those of path 2, see `LocalLinkWatch`). When a NIC of
/// this node loses its link, the MPTCP subflows on its address are dead,
/// but the kernel keeps scheduling data on them until their retransmission
/// timers give up (about 0.6 s on the test bed: fio's longest IO). Withdrawn
/// at once, the address's endpoint takes its subflows with it, and every
/// connection carries on over the other path within milliseconds. When the
/// link is back, the endpoint is announced again and connections gain the
/// subflow anew. Pure: the agent observes its devices and carries out the
/// actions.
public struct LocalPaths: Sendable {
    public enum Action: Hashable, Sendable {
        /// The link under `address` is down: withdraw its MPTCP endpoint.
        case withdraw(address: String)
        /// It is up again: announce the endpoint again.
        case announce(address: String)
    }

    /// Per address: whether its link was up at the last observation (absent: not observed yet).
    private var linkUp: [String: Bool] = [:]
    /// The addresses whose endpoint was withdrawn and not yet announced again.
    private var withdrawn: Set<String> = []

    public init() {}

    /// The link under `address` was observed `up` (or not). Withdraws only
    /// a link seen up before (at the agent's start a link may still be
    /// coming up, and every endpoint was just announced), and announces
    /// again only what it withdrew.
    public mutating func observed(_ address: String, up: Bool) -> Action? {
        let before = linkUp.updateValue(up, forKey: address)
        if up { return withdrawn.remove(address) != nil ? .announce(address: address) : nil }
        guard before == true else { return nil }
        withdrawn.insert(address)
        return .withdraw(address: address)
    }

    /// Whether the endpoint of `address` is withdrawn.
    public func isWithdrawn(_ address: String) -> Bool { withdrawn.contains(address) }
}
