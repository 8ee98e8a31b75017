// Fuzz target: checkpoint decoding. Any bytes give a namespace or a typed
// error; a namespace that decodes checkpoints to bytes that decode again.
import BatonCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCheckpoint(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard let namespace = try? Namespace(checkpoint: Array(UnsafeBufferPointer(start: data, count: size))) else { return 0 }
    precondition((try? Namespace(checkpoint: namespace.checkpoint())) != nil, "a decoded checkpoint does not decode again")
    return 0
}
