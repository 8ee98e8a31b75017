import ArgumentParser
import BatonAgent
import BatonRuntime
import Foundation

/// `baton diagnose`: each agent's view of its peer (DESIGN.md §6): when it
/// last heard the peer on each path, and the diagnostic ladder's last
/// verdict with what each rung found.
struct Diagnose: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show each agent's view of its peer: heartbeats per path and the diagnostic ladder's last findings.")

    @OptionGroup var agents: AgentOptions
    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let (addresses, secret, tls) = try agents.targets()
        var views: [[String: Any]] = []
        for agent in addresses {
            do {
                let (_, text) = try PeerClient.request(.status, toAnyOf: agent, node: "admin", secret: secret, tls: tls)
                let view = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] ?? [:]
                views.append(["agent": agent[0].description, "node": view["node"] ?? "?", "peer": view["peer"] ?? [:]])
            } catch {
                views.append(["agent": agent[0].description, "unreachable": "\(error)"])
            }
        }
        if json {
            let data = try JSONSerialization.data(withJSONObject: ["agents": views], options: [.sortedKeys, .prettyPrinted])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        for view in views {
            guard let peer = view["peer"] as? [String: Any] else {
                print("agent \(view["agent"]!): unreachable (\(view["unreachable"] ?? "?"))\n")
                continue
            }
            print("node \(view["node"]!) (agent \(view["agent"]!)), peer \(peer["name"] ?? "?"):")
            for path in peer["paths"] as? [[String: Any]] ?? [] {
                let switchText = (path["switch"] as? String).flatMap { $0.isEmpty ? nil : ", switch \($0)" } ?? ""
                let carries = Self.carried(path)
                print("  path \(path["path"]!): \(path["local"]!) -> \(path["peer"]!)\(switchText): \(path["state"] ?? "?") for "
                      + "\(Self.seconds(path["since_ms_ago"])), last heard \(path["last_heard_ms_ago"]!) ms ago; carries \(carries)")
            }
            if peer["self_fenced"] as? Bool == true { print("  this node is isolated and has stopped its export servers") }
            if peer["peer_gone"] as? Bool == true { print("  the peer is gone: its exports are taken over, servers here go on alone") }
            if let diagnosis = peer["diagnosis"] as? [String: Any] {
                print("  last diagnosis \(diagnosis["ms_ago"]!) ms ago: \(diagnosis["verdict"]!)")
                let findings = diagnosis["findings"] as? [String: String] ?? [:]
                for rung in Self.rungs {
                    let found = rung.keys.compactMap { key in findings[key].map { "\(key.split(separator: "_").last!): \($0)" } }
                    print("    \(rung.name.padding(16))\(found.joined(separator: ", "))")
                }
            } else {
                print("  no diagnosis yet: the peer has been heard on every path")
            }
            print("")
        }
    }

    /// What a path of an agent's status carries, in words.
    static func carried(_ path: [String: Any]) -> String {
        guard let kinds = path["carries"] as? [String] else { return "?" }
        return kinds.isEmpty ? "nothing" : kinds.joined(separator: ", ")
    }

    /// "12.3 s" from milliseconds.
    private static func seconds(_ milliseconds: Any?) -> String {
        guard let milliseconds = milliseconds as? Int else { return "?" }
        return String(format: "%.1f s", Double(milliseconds) / 1000)
    }

    /// The ladder's rungs in the order it climbs them.
    private static let rungs: [(name: String, keys: [String])] = [
        ("1 peer agent", ["peer_agent_1", "peer_agent_2"]), ("2 peer OS", ["peer_os"]),
        ("3 peer NIC", ["peer_nic_1", "peer_nic_2"]), ("4 switch", ["switch_1", "switch_2"]),
    ]
}
