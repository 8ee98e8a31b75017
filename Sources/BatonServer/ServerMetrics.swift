import BatonCore
import BatonRuntime
import Dispatch
import Glibc
import Metrics

/// An export server's series (swift-metrics; `baton serve --metrics-listen`
/// or its agent's page shows them), each labelled with the export.
final class ServerMetrics: Sendable {
    struct PerOperation: Sendable {
        let requests: Counter
        let latency: Metrics.Timer
    }

    /// Off when the process serves no metrics: requests are then not metered at all.
    let enabled = ProcessMetrics.isBootstrapped
    private let operations: [String: PerOperation]
    let bytesRead: Counter
    let bytesWritten: Counter
    private let journalBytes: Gauge
    private let journalSequence: Gauge
    private let checkpointAge: Gauge
    private let clients: Gauge
    private let standbyLag: Gauge
    private let answeringAlone: Gauge

    init(export: String) {
        var operations: [String: PerOperation] = [:]
        for name in Operation.names {
            let labels = [("export", export), ("operation", name)]
            operations[name] = PerOperation(requests: Counter(label: "baton_requests_total", dimensions: labels),
                                            latency: Metrics.Timer(label: "baton_request_duration_seconds", dimensions: labels))
        }
        self.operations = operations
        let labels = [("export", export)]
        bytesRead = Counter(label: "baton_read_bytes_total", dimensions: labels)
        bytesWritten = Counter(label: "baton_written_bytes_total", dimensions: labels)
        journalBytes = Gauge(label: "baton_journal_bytes", dimensions: labels)
        journalSequence = Gauge(label: "baton_journal_sequence", dimensions: labels)
        checkpointAge = Gauge(label: "baton_checkpoint_age_seconds", dimensions: labels)
        clients = Gauge(label: "baton_clients", dimensions: labels)
        standbyLag = Gauge(label: "baton_standby_lag_records", dimensions: labels)
        answeringAlone = Gauge(label: "baton_answering_alone", dimensions: labels)
    }

    /// Counts a request and starts its clock.
    func started(_ operation: String) -> RequestMeter {
        guard enabled else { return RequestMeter(latency: nil, started: 0) }
        let metrics = operations[operation]
        metrics?.requests.increment()
        return RequestMeter(latency: metrics?.latency, started: DispatchTime.now().uptimeNanoseconds)
    }

    /// The gauges, read when a page is asked for.
    func refresh(store: ExportStore, clients count: Int, replication: (acknowledged: UInt64, alone: Bool)?) {
        journalBytes.record(store.journalBytes)
        let sequence = store.appliedSequence
        journalSequence.record(Int64(clamping: sequence))
        let written = store.checkpointWrittenSeconds
        checkpointAge.record(written == 0 ? 0 : max(0, Int(time(nil)) - written))
        clients.record(count)
        standbyLag.record(replication.map { Int64(clamping: sequence &- min(sequence, $0.acknowledged)) } ?? 0)
        answeringAlone.record(replication?.alone == true ? 1 : 0)
    }
}

/// One request's clock, from its arrival to its answer.
struct RequestMeter: Sendable {
    let latency: Metrics.Timer?
    let started: UInt64

    func answered() {
        latency?.recordNanoseconds(Int64(clamping: DispatchTime.now().uptimeNanoseconds &- started))
    }
}
