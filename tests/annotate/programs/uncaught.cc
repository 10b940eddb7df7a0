// Uncaught C++ exceptions (and aborts that are none), chosen by argv[1]:
//   runtime   std::runtime_error thrown by load_config()
//   custom    ConfigError (derived from std::runtime_error) thrown by load_config()
//   int       a thrown int (no what())
//   other     std::runtime_error thrown by parse_port(), another function
//   noexcept  ConfigError leaving check_config(), which is noexcept
//   rethrow   a std::out_of_range kept in a std::exception_ptr, rethrown by main()
//   terminate std::terminate() called without an exception
//   abort     abort() from C++ code
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

struct ConfigError : std::runtime_error {
    int line;
    ConfigError(const std::string &message, int at) : std::runtime_error(message), line(at) {}
};

__attribute__((noinline)) void load_config(const char *how) {
    std::string path = "/etc/app.conf";
    if (!std::strcmp(how, "custom") || !std::strcmp(how, "noexcept"))
        throw ConfigError("bad key 'port' in " + path, 7);
    if (!std::strcmp(how, "int"))
        throw 42;
    throw std::runtime_error("config file missing: " + path);
}

__attribute__((noinline)) void parse_port(const char *text) {
    throw std::runtime_error(std::string("not a port: ") + text);
}

__attribute__((noinline)) std::exception_ptr capture() {
    try {
        throw std::out_of_range("slot 9 of 4");
    } catch (...) {
        return std::current_exception();
    }
}

__attribute__((noinline)) void check_config(const char *how) noexcept { load_config(how); }

int main(int argc, char **argv) {
    const char *how = argc > 1 ? argv[1] : "runtime";
    if (!std::strcmp(how, "other"))
        parse_port("80x");
    else if (!std::strcmp(how, "noexcept"))
        check_config(how);
    else if (!std::strcmp(how, "rethrow"))
        std::rethrow_exception(capture());
    else if (!std::strcmp(how, "terminate"))
        std::terminate();
    else if (!std::strcmp(how, "abort"))
        std::abort();
    else
        load_config(how);
    return 0;
}
