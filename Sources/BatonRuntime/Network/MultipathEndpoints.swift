import Foundation
import Logging

/// The kernel's MPTCP path manager settings of this machine's network
/// namespace, set through iproute2's `ip mptcp` (issue 9):
///
/// - the limits: every connection may have 2 extra subflows and accept 2
///   announced addresses (the default accepts none, so a connection would
///   never gain a second subflow); only ever raised, never lowered;
/// - on a node, one `signal` endpoint per path address: each MPTCP
///   connection to the node is told the node's other addresses, and the
///   connecting side opens a subflow to each, over that path.
///
/// The agent announces its node's addresses at start; a mount raises the
/// limits. (Announcing an address again, to make the kernel retry a subflow
/// it gave up during an outage, is not done: deleting the endpoint first
/// closes every subflow of the address, this node's own outgoing ones too.
/// The connecting side heals instead: see `ServerConnection`.)
public struct MultipathEndpoints: Sendable {
    public static let subflowLimit = 2
    public static let acceptedAddressLimit = 2

    private let ip: String
    private let logger: Logger

    /// Nil where this machine has no `ip` or no MPTCP: connections are then single-path.
    public init?(logger: Logger) {
        guard Multipath.isAvailable,
              let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first(where: FileManager.default.isExecutableFile)
        else { return nil }
        self.ip = ip
        self.logger = logger
    }

    /// Raises the limits where they are lower; returns what is wrong, if anything.
    @discardableResult
    public func raiseLimits() -> String? {
        guard let shown = run(["mptcp", "limits", "show"]) else { return "cannot read the MPTCP limits" }
        let limits = Self.limits(shown)
        guard limits.subflows < Self.subflowLimit || limits.acceptedAddresses < Self.acceptedAddressLimit else { return nil }
        let subflows = max(limits.subflows, Self.subflowLimit), accepted = max(limits.acceptedAddresses, Self.acceptedAddressLimit)
        guard run(["mptcp", "limits", "set", "subflow", String(subflows), "add_addr_accepted", String(accepted)]) != nil else {
            let problem = "cannot raise the MPTCP limits (subflows \(limits.subflows), add_addr_accepted \(limits.acceptedAddresses))"
            logger.warning("\(problem): connections will not use a second path", metadata: [
                "action": "run as root, or: ip mptcp limits set subflow \(subflows) add_addr_accepted \(accepted)",
            ])
            return problem
        }
        logger.info("MPTCP limits raised", metadata: ["subflows": "\(subflows)", "add_addr_accepted": "\(accepted)"])
        return nil
    }

    /// Makes each address (of this machine) a `signal` endpoint, unless it is one already.
    public func announce(_ addresses: [String]) {
        raiseLimits()
        guard let devices = run(["-o", "-4", "addr", "show"]).map(Self.devices),
              let listed = run(["mptcp", "endpoint", "show"]) else { return }
        let endpoints = Self.endpoints(listed)
        for address in addresses {
            guard let device = devices[address] else {
                logger.warning("no network device holds this path address: MPTCP does not announce it", metadata: [
                    "address": "\(address)", "action": "check the node's paths in the cluster file",
                ])
                continue
            }
            guard !endpoints.contains(address) else { continue }
            if run(["mptcp", "endpoint", "add", address, "dev", device, "signal"]) != nil {
                logger.info("MPTCP endpoint announced", metadata: ["address": "\(address)", "device": "\(device)"])
            }
        }
    }

    /// The device that holds each of these addresses (of this machine).
    public func devices(of addresses: [String]) -> [String: String] {
        guard let all = run(["-o", "-4", "addr", "show"]).map(Self.devices) else { return [:] }
        return all.filter { addresses.contains($0.key) }
    }

    /// Deletes the endpoint of `address`: the kernel closes every subflow on
    /// it (`LocalPaths`: its link is down). False when it had none or `ip` failed.
    @discardableResult
    public func withdraw(_ address: String) -> Bool {
        guard let listed = run(["mptcp", "endpoint", "show"]), let id = Self.endpointIDs(listed)[address] else { return false }
        return run(["mptcp", "endpoint", "delete", "id", id]) != nil
    }

    // MARK: iproute2's words

    /// "add_addr_accepted 0 subflows 2"
    static func limits(_ text: String) -> (subflows: Int, acceptedAddresses: Int) {
        let words = text.split(whereSeparator: \.isWhitespace).map(String.init)
        func value(_ key: String) -> Int { words.firstIndex(of: key).flatMap { words.indices.contains($0 + 1) ? Int(words[$0 + 1]) : nil } ?? 0 }
        return (value("subflows"), value("add_addr_accepted"))
    }

    /// Lines of `ip -o -4 addr show`: "2: eth0    inet 198.18.1.1/24 brd ... scope global eth0 ..." → address: device.
    static func devices(_ text: String) -> [String: String] {
        var devices: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let words = line.split(whereSeparator: \.isWhitespace)
            guard words.count > 3, words[2] == "inet", let address = words[3].split(separator: "/").first else { continue }
            devices[String(address)] = String(words[1].split(separator: "@").first ?? words[1])
        }
        return devices
    }

    /// Lines of `ip mptcp endpoint show`: "198.18.2.1 id 1 signal dev eth1" → the addresses.
    static func endpoints(_ text: String) -> Set<String> { Set(endpointIDs(text).keys) }

    /// The same lines → address: endpoint id.
    static func endpointIDs(_ text: String) -> [String: String] {
        var ids: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let words = line.split(whereSeparator: \.isWhitespace)
            if words.count > 2, words[1] == "id" { ids[String(words[0])] = String(words[2]) }
        }
        return ids
    }

    /// Runs `ip ARGUMENTS`; its output, or nil (logged) when it failed.
    private func run(_ arguments: [String]) -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ip)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        do {
            try process.run()
        } catch {
            logger.warning("cannot run ip", metadata: ["arguments": "\(arguments.joined(separator: " "))", "error": "\(error)"])
            return nil
        }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            logger.warning("ip failed", metadata: [
                "arguments": "\(arguments.joined(separator: " "))", "status": "\(process.terminationStatus)",
                "output": "\(text.trimmingCharacters(in: .whitespacesAndNewlines))",
            ])
            return nil
        }
        return text
    }
}
