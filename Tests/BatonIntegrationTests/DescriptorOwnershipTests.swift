// Goal: code that fails a connection closes its descriptor once. A second
// close reaches whatever descriptor another thread opened under the same
// number meanwhile: a soak found an agent whose fence (connects failing,
// "network is unreachable") closed the wake-up descriptor of a run loop
// being set up on another thread, and the agent crashed mid-swap.
// Method: one thread fails connections to a port nobody listens on while
// another keeps opening pipes and checks they stay open.
import BatonCore
import BatonRuntime
import Foundation
import Glibc
import Synchronization
import XCTest

final class DescriptorOwnershipTests: XCTestCase {
    func testAFailedConnectClosesItsSocketOnce() throws {
        let refused = NodeAddress(host: "127.0.0.1", port: try unusedPort())
        let stop = Flag()
        let strayCloses = Counter()
        let watcher = Thread {
            while !stop.value.load(ordering: .relaxed) {
                var ends: [Int32] = [0, 0]
                guard pipe(&ends) == 0 else { continue }
                // A descriptor closed under us answers EBADF.
                for _ in 0..<50 where fcntl(ends[0], F_GETFD) < 0 || fcntl(ends[1], F_GETFD) < 0 {
                    strayCloses.value.add(1, ordering: .relaxed)
                    break
                }
                close(ends[0])
                close(ends[1])
            }
        }
        watcher.start()
        defer { stop.value.store(true, ordering: .relaxed) }
        let deadline = ContinuousClock.now + .seconds(3)
        var attempts = 0
        while ContinuousClock.now < deadline, strayCloses.value.load(ordering: .relaxed) == 0, attempts < 20_000 {
            attempts += 1
            XCTAssertThrowsError(try BlockingConnection(refused, timeoutMilliseconds: 500))
        }
        XCTAssertEqual(strayCloses.value.load(ordering: .relaxed), 0, "a failed connection closed another thread's descriptor (after \(attempts) attempts)")
    }

    private func unusedPort() throws -> Int {
        let (socket, port) = try ListeningSocket.open(NodeAddress(host: "127.0.0.1", port: 0))
        close(socket)
        return port
    }
}

private final class Flag: Sendable { let value = Atomic(false) }
private final class Counter: Sendable { let value = Atomic(0) }
