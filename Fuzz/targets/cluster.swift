// Fuzz target: the cluster file. Any text parses to a configuration or to
// an error with a message, never a crash.
import BatonCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzClusterFile(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    _ = try? ClusterConfiguration.parse(String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self))
    return 0
}
