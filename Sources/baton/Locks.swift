import ArgumentParser
import BatonCore
import BatonRuntime
import Foundation

/// `baton locks EXPORT`: what locks the export's server holds for its
/// clients (issue 12). Asked of the server itself, on its client port: the
/// lock table and the clients' sessions live there.
struct Locks: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the locks held on an export: file, range, kind, client and since when.",
        discussion: "The agents say which node serves the export; its server answers. With TLS this needs an admin "
            + "certificate. --server asks one export server (`baton serve`) directly.")

    @Argument(help: "The export.")
    var export: String

    @Option(help: "Ask this export server (HOST:PORT, the export's client port) instead of finding it through the agents.")
    var server: NodeAddress?

    @OptionGroup var agents: AgentOptions

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let (address, tls) = try serverAddress()
        let connection = try BlockingConnection(address, timeoutMilliseconds: 10_000, tls: tls)
        try connection.send(.hello(export: export, session: 0, version: Message.protocolVersion))
        while true {
            switch try connection.receive() {
            case .welcome: try connection.send(.locksAsked)
            case .refused(let refusal, let detail): throw ValidationError("\(address) did not list the locks of '\(export)': \(refusal): \(detail)")
            case .locksAnswer(let text):
                let listing = try StatusJSON.decode(LockListing.self, from: text)
                if json { print(StatusJSON.encode(listing, pretty: true)) } else { printTable(listing) }
                return
            default: continue  // the export's addresses and lease, said after the welcome
            }
        }
    }

    private func serverAddress() throws -> (NodeAddress, TLSIdentity?) {
        if let server, agents.config == nil {
            let tls = try agents.tlsCert.map { cert -> TLSIdentity in
                guard let key = agents.tlsKey, let ca = agents.tlsCa else { throw ValidationError("--tls-cert needs --tls-key and --tls-ca") }
                return try AdminIdentity.load(TLSFiles(certificate: cert, key: key, authority: ca))
            }
            return (server, tls)
        }
        let (addresses, secret, tls) = try agents.targets()
        if let server { return (server, tls) }
        var answers: [AgentStatus] = []
        for agent in addresses {
            guard let (_, text) = try? PeerClient.request(.status, toAnyOf: agent, node: "admin", secret: secret, tls: tls),
                  let answer = try? StatusJSON.decode(AgentStatus.self, from: text) else { continue }
            answers.append(answer)
        }
        let cluster = ClusterStatus(answers: answers, unreachable: [])
        guard let entry = cluster.exports.first(where: { $0.name == export }) else {
            throw ValidationError("no agent that answered knows export '\(export)' (\(answers.count) of \(addresses.count) answered)")
        }
        guard let served = entry.server, let address = NodeAddress(served.address) else {
            throw ValidationError("export '\(export)' is not served now: no server holds its locks (see `baton status`)")
        }
        return (address, tls)
    }

    private func printTable(_ listing: LockListing) {
        print("export \(listing.export), epoch \(listing.epoch): \(listing.locks.count + listing.more) lock(s); "
              + "a client keeps its locks while it renews them within \(listing.leaseMs) ms")
        guard !listing.locks.isEmpty else { return }
        let time = ISO8601DateFormatter()
        print("FILE".padding(28) + "RANGE".padding(16) + "KIND".padding(10) + "FAMILY".padding(7) + "PID".padding(8)
              + "SINCE".padding(22) + "CLIENT")
        for lock in listing.locks {
            let range = "\(lock.start)-\(lock.end.map(String.init) ?? "EOF")"
            print(lock.file.padding(28) + range.padding(16) + lock.kind.padding(10) + lock.family.padding(7)
                  + "\(lock.pid)".padding(8) + time.string(from: Date(timeIntervalSince1970: lock.since)).padding(22)
                  + "\(lock.client) (session \(lock.session))")
        }
        if listing.more > 0 { print("and \(listing.more) more") }
    }
}
