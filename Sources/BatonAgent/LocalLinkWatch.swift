import BatonCore
import BatonRuntime
import Dispatch
import Logging
import NIOCore

/// Watches the NICs under this node's path addresses every tick and carries
/// out `LocalPaths`: a NIC that loses its link has its MPTCP endpoint
/// withdrawn at once (the kernel closes the subflows on it, and connections
/// go on over the other path instead of waiting out their retransmission
/// timers), and announced again once the link is back.
final class LocalLinkWatch: @unchecked Sendable {
    static let interval = TimeAmount.milliseconds(20)

    private let devices: [(path: Int, address: String, device: String)]
    private let endpoints: MultipathEndpoints
    private let links: DeviceLinks
    private let logger: Logger
    private let restored: @Sendable () -> Void
    /// Confined to the event loop of `task`.
    private var paths = LocalPaths()
    private var task: RepeatedTask?
    /// `ip` runs take milliseconds: off the event loop, in order.
    private let commands = DispatchQueue(label: "baton.local-links")

    /// `addresses`: this node's path addresses, path 1 first. Path 1 is
    /// left to the kernel's timers: connections are made to its address, so
    /// it is never announced to them, and a withdrawal tells their other
    /// end nothing; that end kept sending on its subflow, and on the test
    /// bed replication to a standby whose NIC 1 was cut stalled for the wait
    /// limit in 2 of 5 runs. An announced address's withdrawal is sent to
    /// the other end (RM_ADDR), which closes its subflow too. Nil when no
    /// other path's address is on a device here.
    /// `restored`: after an endpoint was announced again (the servers here may gain their subflow).
    init?(addresses: [String], endpoints: MultipathEndpoints, logger: Logger, restored: @escaping @Sendable () -> Void) {
        let found = endpoints.devices(of: addresses)
        let devices = addresses.enumerated().dropFirst().compactMap { index, address in found[address].map { (index + 1, address, $0) } }
        guard !devices.isEmpty, let links = DeviceLinks() else { return nil }
        self.devices = devices
        self.endpoints = endpoints
        self.links = links
        self.logger = logger
        self.restored = restored
    }

    func start(on loop: EventLoop) {
        task = loop.scheduleRepeatedTask(initialDelay: Self.interval, delay: Self.interval) { [self] _ in check() }
    }

    func stop() { task?.cancel() }

    private func check() {
        for (path, address, device) in devices {
            guard let up = links.hasLink(device), let action = paths.observed(address, up: up) else { continue }
            let metadata: Logger.Metadata = ["path": "\(path)", "address": "\(address)", "device": "\(device)"]
            commands.async { [endpoints, logger, restored] in
                switch action {
                case .withdraw:
                    let withdrawn = endpoints.withdraw(address)
                    logger.warning("this node's NIC lost its link: the MPTCP endpoint of its path is withdrawn, the other path carries the traffic",
                                   metadata: metadata.merging(["mptcpEndpoint": withdrawn ? "withdrawn" : "none"]) { $1 })
                case .announce:
                    endpoints.announce([address])
                    logger.notice("this node's NIC has its link again: the MPTCP endpoint of its path is announced again",
                                  metadata: metadata.merging(["mptcpEndpoint": "announced"]) { $1 })
                    restored()
                }
            }
        }
    }
}
