import ArgumentParser
import BatonRuntime

@main
struct Baton: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "baton",
        abstract: "Baton, a failover file system: export servers, mounts and node agents.",
        version: BatonVersion.description,
        subcommands: [Serve.self, Mount.self, Agent.self, Status.self, Locks.self, Migrate.self, ForceServe.self, Diagnose.self, Cert.self])

    static func main() {
        MemoryTuning.keepLargeBuffersWarm()
        main(nil)
    }
}
