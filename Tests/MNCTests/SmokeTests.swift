import XCTest
@testable import MNC

final class SmokeTests: XCTestCase {
    func testActivationValues() {
        XCTAssertEqual(Activation.relu6.apply(7), 6)
    }
}
