import ArgumentParser
import BatonCore
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
        var views: [DiagnoseView] = []
        for agent in addresses {
            do {
                let (_, text) = try PeerClient.request(.status, toAnyOf: agent, node: "admin", secret: secret, tls: tls)
                let answer = try StatusJSON.decode(AgentStatus.self, from: text)
                views.append(DiagnoseView(agent: agent[0].description, node: answer.node, peer: answer.peer))
            } catch {
                views.append(DiagnoseView(agent: agent[0].description, unreachable: "\(error)"))
            }
        }
        if json {
            print(StatusJSON.encode(["agents": views], pretty: true))
            return
        }
        for view in views {
            guard let peer = view.peer else {
                print("agent \(view.agent): unreachable (\(view.unreachable ?? "?"))\n")
                continue
            }
            print("node \(view.node ?? "?") (agent \(view.agent)), peer \(peer.name):")
            for path in peer.paths {
                let switchText = path.switch.isEmpty ? "" : ", switch \(path.switch)"
                print("  path \(path.path): \(path.local) -> \(path.peer)\(switchText): \(path.state) for "
                      + "\(Self.seconds(path.sinceMsAgo)), last heard \(path.lastHeardMsAgo) ms ago; carries \(Self.carried(path))")
            }
            if peer.selfFenced { print("  this node is isolated and has stopped its export servers") }
            if peer.peerGone { print("  the peer is gone: its exports are taken over, servers here go on alone") }
            if let diagnosis = peer.diagnosis {
                print("  last diagnosis \(diagnosis.msAgo) ms ago: \(diagnosis.verdict)")
                for rung in Self.rungs {
                    let found = rung.keys.compactMap { key in diagnosis.findings[key].map { "\(key.split(separator: "_").last!): \($0)" } }
                    print("    \(rung.name.padding(16))\(found.joined(separator: ", "))")
                }
            } else {
                print("  no diagnosis yet: the peer has been heard on every path")
            }
            print("")
        }
    }

    /// One agent's view, or why it gave none.
    struct DiagnoseView: Encodable {
        var agent: String
        var node: String?
        var peer: PeerStatus?
        var unreachable: String?
    }

    /// What a path of an agent's status carries, in words.
    static func carried(_ path: PeerStatus.Path) -> String {
        path.carries.isEmpty ? "nothing" : path.carries.joined(separator: ", ")
    }

    /// "12.3 s" from milliseconds.
    private static func seconds(_ milliseconds: Int) -> String { String(format: "%.1f s", Double(milliseconds) / 1000) }
    /// The ladder's rungs in the order it climbs them.
    private static let rungs: [(name: String, keys: [String])] = [
        ("1 peer agent", ["peer_agent_1", "peer_agent_2"]), ("2 peer OS", ["peer_os"]),
        ("3 peer NIC", ["peer_nic_1", "peer_nic_2"]), ("4 switch", ["switch_1", "switch_2"]),
    ]
}
