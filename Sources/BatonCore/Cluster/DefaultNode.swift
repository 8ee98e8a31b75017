extension ClusterConfiguration {
    /// The node an agent started without `--node` runs as: the one named as
    /// this machine's short host name (up to the first dot), since admins
    /// name nodes after their machines; the same cluster file and the same
    /// systemd unit then serve every node. Nil when no node has that name.
    public func node(forHostname hostname: String) -> NodeConfiguration? {
        let short = hostname.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        return short.isEmpty ? nil : node(named: short)
    }
}
