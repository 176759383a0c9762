"""Gymnasium environments this project adds. Importing a module registers its env ids."""
