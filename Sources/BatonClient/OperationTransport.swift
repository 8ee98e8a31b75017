import BatonCore
import BatonRuntime

/// Carries operations to the export's active server and brings back replies.
/// The FUSE layer sees only this: which server is active, reconnection,
/// re-sending after a failover and request timeouts all live behind it.
public protocol OperationTransport: AnyObject, Sendable {
    /// Sends `operation`; `completion` runs exactly once, on any thread, with
    /// the server's reply (or `.error(.EIO)` once the request timeout expires).
    /// Never blocks the calling thread on the network. `caller` is who on
    /// this machine asks, for a server that squashes identities; nil for
    /// what the kernel sends on nobody's behalf (forget, release).
    func send(_ operation: Operation, caller: Credentials?, completion: @escaping @Sendable (Reply) -> Void)

    /// Sends a write whose data is only valid during the call: it is copied
    /// once, into the request's frame, before this returns.
    func sendWrite(_ inode: InodeNumber, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer,
                   completion: @escaping @Sendable (Reply) -> Void)
}

extension ServerConnection: OperationTransport {}
