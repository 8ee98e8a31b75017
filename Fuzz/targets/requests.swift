// Fuzz target: what the server does with decoded requests. The input is a
// stream of frames; each request is applied to a namespace as the server
// applies it (mutations as journal records, queries as queries), so no
// sequence of client requests, however malformed or out of order, may crash
// the namespace a server and its standby both run.
import BatonCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequests(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var namespace = Namespace(createdAt: Timestamp(seconds: 1, nanoseconds: 0))
    var rest = UnsafeRawBufferPointer(start: data, count: size)
    var sequence: UInt64 = 0
    while rest.count >= 4 {
        let length = Int(rest.loadUnaligned(as: UInt32.self).littleEndian)
        guard length <= rest.count - 4 else { break }
        let frame = UnsafeRawBufferPointer(rebasing: rest[4..<4 + length])
        rest = UnsafeRawBufferPointer(rebasing: rest[(4 + length)...])
        guard case .request(let request, _, let operation, _)? = try? Message.decode(frame) else { continue }
        // As a server that squashes checks its callers' requests first.
        _ = namespace.permissionProblem(operation, by: Credentials(uid: 1000, gid: 1000))
        if operation.isMutation {
            sequence += 1
            let record = JournalRecord(sequence: sequence, epoch: 1, time: Timestamp(seconds: Int64(sequence), nanoseconds: 0),
                                       session: 1, requestSequence: request, operation: operation)
            _ = namespace.apply(record)
        } else {
            _ = namespace.query(operation)
        }
    }
    return 0
}
