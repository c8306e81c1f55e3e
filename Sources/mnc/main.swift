import Foundation
import MNC

setvbuf(stdout, nil, _IOFBF, 1 << 16)
let status = runCommandLine(Array(CommandLine.arguments.dropFirst()))
fflush(stdout)
exit(status)
