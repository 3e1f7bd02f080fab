"""Network definitions: the 2-2-2 toy net, general MLP delta rule, and the MNIST CNN."""
