#include "hello/greet.h"

#include "gen/config.h"

std::string Greeting(const std::string& who) { return std::string(GREETING_PREFIX) + ", " + who + "!"; }
