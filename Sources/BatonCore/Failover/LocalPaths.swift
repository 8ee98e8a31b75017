/// The links under this node's own path addresses (issue 9). When a NIC of
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

    public init() {}

    /// The link under `address` was observed `up` (or not). An action on a
    /// change only, and on a first observation that finds it down (the
    /// agent announced every address at start).
    public mutating func observed(_ address: String, up: Bool) -> Action? {
        let before = linkUp.updateValue(up, forKey: address)
        guard before != up else { return nil }
        if up { return before == nil ? nil : .announce(address: address) }
        return .withdraw(address: address)
    }

    /// Whether the link under `address` was down at the last observation.
    public func isDown(_ address: String) -> Bool { linkUp[address] == false }
}
