// Goal: the agent reads iproute2's words right: the MPTCP limits, which
// device holds a path address, and which endpoints exist already.
@testable import BatonRuntime
import XCTest

final class MultipathEndpointsTests: XCTestCase {
    func testTheLimitsAreRead() {
        let limits = MultipathEndpoints.limits("add_addr_accepted 0 subflows 2 \n")
        XCTAssertEqual(limits.subflows, 2)
        XCTAssertEqual(limits.acceptedAddresses, 0)
        XCTAssertEqual(MultipathEndpoints.limits("").subflows, 0)
    }

    func testEachAddressIsFoundOnItsDevice() {
        let shown = """
        1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
        2: eth0@if5    inet 198.18.1.1/24 scope global eth0\\       valid_lft forever preferred_lft forever
        3: eth1    inet 198.18.2.1/24 brd 198.18.2.255 scope global eth1\\       valid_lft forever preferred_lft forever
        """
        XCTAssertEqual(MultipathEndpoints.devices(shown), ["127.0.0.1": "lo", "198.18.1.1": "eth0", "198.18.2.1": "eth1"])
    }

    func testExistingEndpointsAreFoundByAddress() {
        let shown = "198.18.2.1 id 1 signal dev eth1 \n198.18.1.1 id 2 signal dev eth0 \n"
        XCTAssertEqual(MultipathEndpoints.endpoints(shown), ["198.18.2.1", "198.18.1.1"])
        XCTAssertEqual(MultipathEndpoints.endpoints(""), [])
        // A withdrawal deletes by id.
        XCTAssertEqual(MultipathEndpoints.endpointIDs(shown), ["198.18.2.1": "1", "198.18.1.1": "2"])
    }

    /// This machine's loopback has its link; a device that does not exist is nil, not "down".
    func testADevicesLinkIsAskedOfTheKernel() throws {
        let links = try XCTUnwrap(DeviceLinks())
        XCTAssertEqual(links.hasLink("lo"), true)
        XCTAssertNil(links.hasLink("baton-none0"))
    }
}

/// Goal: `baton status` counts a path's connections from `/proc/net/tcp` right.
final class TCPCensusTests: XCTestCase {
    func testEstablishedConnectionsAreReadWithTheirLocalAddress() {
        let table = """
          sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
           0: 010112C6:1B58 0A0112C6:9C4E 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1
           1: 010212C6:1B58 0A0212C6:9C4F 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
        """
        XCTAssertEqual(TCPCensus.parse(table), [TCPCensus.Connection(localHost: "198.18.1.1", localPort: 7000, remotePort: 40014)])
    }
}
