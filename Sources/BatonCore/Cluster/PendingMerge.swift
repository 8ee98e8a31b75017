// Stand-ins until the config branch lands (removed at its merge).
extension ClusterConfiguration {
    public var switches: [String] { [] }
}
extension ClusterTimings {
    public var diagnosisTimings: DiagnosisTimings {
        try! DiagnosisTimings(roundDeadline: .milliseconds(100),
                              agentHeartbeatInterval: .milliseconds(UInt64(agentHeartbeatIntervalMilliseconds)),
                              agentHeartbeatGrace: .milliseconds(UInt64(agentHeartbeatGraceMilliseconds)),
                              selffenceDelay: .milliseconds(1800), takeoverDelay: .milliseconds(2500))
    }
}
