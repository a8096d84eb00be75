#include <iostream>

#include "hello/greet.h"

int main() {
  const std::string got = Greeting("bazel");
  if (got != "Hello, bazel!") {
    std::cerr << "unexpected greeting: " << got << std::endl;
    return 1;
  }
  std::cout << "ok" << std::endl;
  return 0;
}
