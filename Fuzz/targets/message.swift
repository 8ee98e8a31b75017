// Fuzz target: the wire decoder. Any bytes decode to a message or a typed
// error, never a crash; a message that decodes encodes to bytes that decode
// to the same message.
import BatonCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMessage(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    guard let message = try? Message.decode(bytes) else { return 0 }
    let again = Array(message.frame().dropFirst(4))
    let decoded = try? again.withUnsafeBytes { try Message.decode($0) }
    precondition(decoded == message, "\(message) does not survive a round trip")
    return 0
}
