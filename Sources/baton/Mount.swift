import ArgumentParser

struct Mount: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Mount an export with FUSE.")
    func run() throws {}
}
