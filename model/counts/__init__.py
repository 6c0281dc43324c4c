"""Count memories the models share: co-occurrence, popularity, top lists."""
